"""Notebook plumbing: the setup cell, recording key numbers, reading them back, and the
closing "What we saw" rendered from this run's records.

`record(name, value)` stores the value under a private MIME type (nothing is printed), so
papermill keeps it in the executed notebook; `read_records(path)` collects them again for
tests and benchmarks. `summary(template)` fills a Markdown template with recorded values,
so every number a notebook's prose reports comes from its own run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from xai_utils.viz.live import explorer  # noqa: F401 - the notebooks' explorers

MIME = "application/vnd.xai-utils.record+json"
RECORDS: dict[str, object] = {}


def _plain(value):
    """JSON-able copy of numbers, tensors, arrays, lists and dicts (NaN kept as None)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot record a {type(value).__name__}")


def record(name: str, value) -> None:
    """Record a key number (or list / dict of them) under `name` in the notebook output."""
    from IPython.display import display

    plain = _plain(value)
    RECORDS[name] = plain
    display({MIME: {name: plain}, "text/plain": ""}, raw=True)


def read_records(path: str | Path) -> dict[str, object]:
    """All values recorded in an executed notebook, by name (later records win)."""
    nb = json.loads(Path(path).read_text())
    found: dict[str, object] = {}
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {}).get(MIME)
            if isinstance(data, str):
                data = json.loads(data)
            if data:
                found.update(data)
    return found


def check_params(values: dict, **types) -> None:
    """Raise a TypeError naming any notebook parameter whose value has the wrong type.

    >>> check_params(globals(), MODEL=str, TOPK=int, INTERACTIVE=bool)
    """
    for name, expected in types.items():
        if name not in values:
            raise NameError(f"notebook parameter {name} is not defined")
        value = values[name]
        allowed = expected if isinstance(expected, tuple) else (expected,)
        is_bool = isinstance(value, bool)
        ok = isinstance(value, allowed) and not (is_bool and bool not in allowed)
        if float in allowed and isinstance(value, int) and not is_bool:
            ok = True
        if not ok:
            names = " or ".join(t.__name__ for t in allowed)
            raise TypeError(f"notebook parameter {name} must be {names}, "
                            f"got {type(value).__name__} {value!r}")


def setup(values: dict, **types):
    """The first code cell of every notebook: check the parameters' types (`check_params`),
    run on `DEVICE` when it is set, seed torch with `SEED`, and return
    `load_model(MODEL, pretrained=PRETRAINED)` when the notebook has a `MODEL` parameter
    (else None). `PRETRAINED` defaults to True; False gives a zoo model random weights, so
    a notebook runs offline on any architecture (its maps then explain nothing).

    >>> model = setup(globals(), MODEL=str, SEED=int, DEVICE=str, INTERACTIVE=bool)
    """
    import torch

    from xai_utils.models import load_model

    check_params(values, **types)
    if values.get("DEVICE"):
        os.environ["XAI_DEVICE"] = values["DEVICE"]
    torch.manual_seed(values.get("SEED", 0))
    if "MODEL" not in types:
        return None
    pretrained = values.get("PRETRAINED", True)
    model = load_model(values["MODEL"], pretrained=pretrained)
    size = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"MODEL {values['MODEL']}: {type(model).__name__}, {size:.1f} M parameters, "
          f"{'trained' if pretrained else 'random'} weights, {model.xai.input_size} px input, "
          f"on {next(model.parameters()).device}")
    return model


def compare(a: float, b: float, less: str = "lower", more: str = "higher",
            same: str = "the same", tol: float = 0.0) -> str:
    """The word for how `a` stands to `b` ("lower" / "higher" / "the same" within `tol`),
    for prose whose direction can flip between runs."""
    if abs(a - b) <= tol:
        return same
    return less if a < b else more


def trend(values, names, tie) -> str:
    """How a sequence moves from one entry to the next, in words for prose: runs of "falls",
    "rises" or "stays about the same" (where `tie(u, v)` holds), e.g. "falls from a to b, then
    stays about the same at each step from b to d". `names` label the entries."""
    moves = ["stays about the same" if tie(u, v) else "rises" if v > u else "falls"
             for u, v in zip(values[:-1], values[1:], strict=True)]
    runs: list[list] = []  # [word, first index, last index]
    for k, word in enumerate(moves):
        if runs and runs[-1][0] == word:
            runs[-1][2] = k + 1
        else:
            runs.append([word, k, k + 1])
    return ", then ".join(f"{w} {'at each step ' if j - i > 1 else ''}from {names[i]} to {names[j]}"
                          for w, i, j in runs)


def listing(items, empty: str = "none") -> str:
    """Names for prose: "a", "a and b", "a, b and c" (`empty` for none)."""
    items = [str(i) for i in items]
    if not items:
        return empty
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def summary(template: str, name: str | None = None, headline: str | None = None,
            **values) -> str:
    """Render a notebook's "What we saw" from this run's records and display it as Markdown.

    `{record}` and `{record[key]}` fields (format specs allowed: `{prob[chelsea]:.4f}`) are
    filled from `record`ed values; `values` adds computed ones (words from `compare`,
    derived numbers). With `name`, the text is also written to `figures/<name>.md`, and
    `headline` (one sentence, a template on the same fields) to
    `figures/<name without _summary>_headline.md`: `make figures` builds the README's
    notebook table from the headlines and `docs/results.md` from the summaries. Returns the
    text.
    """
    from IPython.display import Markdown, display

    fields = {**RECORDS, **values}
    try:
        text = template.format_map(fields)
        line = headline.format_map(fields) if headline else None
    except KeyError as err:
        raise KeyError(f"summary names {err} but nothing was recorded under it; recorded: "
                       f"{sorted(RECORDS)}") from None
    if name:
        from xai_utils.viz import figures_dir

        out = figures_dir()
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.md").write_text(text.strip() + "\n")
        if line:
            stem = name.removesuffix("_summary")
            (out / f"{stem}_headline.md").write_text(" ".join(line.split()) + "\n")
    display(Markdown(text))
    return text


def execute(path: str | Path, out: str | Path, parameters: dict | None = None,
            cwd: str | Path | None = None) -> None:
    """Run a notebook with papermill (`make figures`, the notebook tests), its kernel on
    IPC sockets instead of TCP (no unencrypted port, no transport warning)."""
    import papermill as pm
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        transport = "ipc"

    path = Path(path)
    pm.execute_notebook(str(path), str(out), parameters=parameters or {},
                        kernel_name="python3", cwd=str(cwd or path.parent), progress_bar=False,
                        kernel_manager_class=IPCKernelManager)


def upload(draw, accept: str = "image/*", dpi: float | None = None):
    """A file-upload button whose image `draw(rgb, name)` explains in a picture below it.

    The file is read with `load_image` (any format and mode PIL reads); a file that is not a
    readable image, or a `draw` that fails, puts the clear error in the caption and the
    notebook keeps working for the next upload.
    """
    import ipywidgets as widgets

    from xai_utils.data.images import load_image
    from xai_utils.viz.live import LivePicture

    button = widgets.FileUpload(accept=accept, multiple=False, description="your photo")
    picture = LivePicture(dpi)
    picture.caption.value = "upload a photo to explain it"

    def update(change) -> None:
        if not change["new"]:
            return
        item = change["new"][-1]
        name = item["name"]
        try:
            picture.show(draw(load_image(item["content"], name=name), Path(name).stem))
        except Exception as err:  # noqa: BLE001 - shown to the reader, not swallowed
            message = f"{type(err).__name__}: {err}"
            picture.fail(message if name in message else f"{name}: {message}")

    button.observe(update, names="value")
    return widgets.VBox([button, picture.box])
