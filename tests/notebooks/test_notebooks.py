"""Every notebook, executed by papermill with tiny parameters, must record what
smoke/<notebook>.json expects and write its figures; committed notebooks carry no outputs and
one parameters cell."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
from smoke_checks import check_executed

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE = {p.stem + ".ipynb": json.loads(p.read_text())
         for p in (Path(__file__).parent / "smoke").glob("*.json")}

# A result typed into prose: a number with two or more decimals, or a percentage. Allowed in
# inline code and maths (parameters, formulas), in arXiv ids, and on a line that names its
# source (a paper's, the thesis's or another implementation's reported value).
RESULT_NUMBER = re.compile(r"(?<![\w.:/-])(\d+(?:\.\d+)?\s?%|\d+\.\d{2,})")
SOURCE = re.compile(r"report|paper|thesis|seed|original|torchray|publish|caffe|\bport\b|"
                    r"tutorial|walk-through|et al|arxiv", re.I)
CODE_OR_MATH = re.compile(r"`[^`]*`|\$\$.*?\$\$|\$[^$]*\$", re.S)

pm = pytest.importorskip("papermill")


def hand_typed_numbers(markdown: str) -> list[str]:
    """Result-like numbers in a Markdown text that do not come from the run (see above)."""
    text = CODE_OR_MATH.sub("", markdown)
    return [f"{number} in: {line.strip()[:90]}" for line in text.splitlines()
            if not SOURCE.search(line) for number in RESULT_NUMBER.findall(line)]


def test_hand_typed_number_detector():
    assert hand_typed_numbers("the cat fell to 0.00089 (0.23 %) of it") == [
        "0.00089 in: the cat fell to 0.00089 (0.23 %) of it",
        "0.23 % in: the cat fell to 0.00089 (0.23 %) of it"]
    assert hand_typed_numbers("accuracy 0.649 -> 0.770") and hand_typed_numbers("keeps 43 %")
    assert not hand_typed_numbers("the paper reports 0.00089 for VGG19")
    assert not hand_typed_numbers("lr $0.01$, a `BORDER = 0.1` band, arXiv:1704.03296")
    assert not hand_typed_numbers("step 7, sigma 21, 800 steps, lambda 0.1")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_numbers_come_from_the_run(path):
    """Markdown holds no hand-typed result; the closing "What we saw" is rendered from the
    run's records by `xai_utils.notebook.summary`."""
    cells = json.loads(path.read_text())["cells"]
    typed = [hit for c in cells if c["cell_type"] == "markdown"
             for hit in hand_typed_numbers("".join(c["source"]))]
    assert not typed, "hand-typed results in the prose (render them with summary()):\n" + \
        "\n".join(typed)
    rendered = [c for c in cells if c["cell_type"] == "code"
                and "summary(" in "".join(c["source"]) and "What we saw" in "".join(c["source"])]
    assert rendered, "no closing 'What we saw' rendered by summary()"
    assert not any(c["cell_type"] == "markdown" and "What we saw" in "".join(c["source"])
                   for c in cells), "'What we saw' is typed by hand"


def _run(path: Path, tmp_path: Path, parameters: dict) -> Path:
    from xai_utils.notebook import execute

    out = tmp_path / path.name
    os.environ["XAI_FIGURES_DIR"] = str(tmp_path / "figures")
    try:
        execute(path, out, parameters)
    finally:
        os.environ.pop("XAI_FIGURES_DIR")
    return out


def test_every_notebook_has_smoke_parameters():
    assert NOTEBOOKS, "no notebooks found"
    assert sorted(p.name for p in NOTEBOOKS) == sorted(SMOKE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    assert not any(c.get("outputs") for c in nb["cells"]), "strip outputs before committing"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert not any(c["cell_type"] == "code" and "\ndef " in "\n" + "".join(c["source"])
                   and "".join(c["source"]).count("\n") > 40 for c in nb["cells"])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # 08 runs all 16 methods; a shared machine may be slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_records(path, tmp_path):
    """Skipped in a session that runs the same notebook with the same parameters in the
    browser (tests/browser/test_widgets.py checks the same promises there; see
    tests/conftest.py)."""
    spec = SMOKE[path.name]
    check_executed(_run(path, tmp_path, spec["parameters"]), tmp_path / "figures", spec)


# Not the notebooks' model, a zoo name, and random weights (offline).
OTHER_MODEL = "torchvision:resnet18"


def parameter_names(path: Path) -> set[str]:
    """The names the parameters cell of a notebook assigns."""
    cell = next(c for c in json.loads(path.read_text())["cells"]
                if "parameters" in c.get("metadata", {}).get("tags", []))
    return {name.strip() for line in "".join(cell["source"]).splitlines()
            if re.match(r"^[A-Z_, ]+=", line) for name in line.split("=")[0].split(",")}


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if "PRETRAINED" in parameter_names(p)],
                         ids=lambda p: p.stem)
def test_notebook_runs_on_another_model_and_a_photo_file(path, tmp_path):
    """A reader's own MODEL and photo: every notebook with a model runs end to end on a zoo
    model with random weights and a photo given by its file path (a name with a space),
    writes its figures, and names that model in its outputs."""
    from PIL import Image

    import xai_utils as xu

    photo = tmp_path / "my photo.png"
    Image.fromarray(xu.load_image("chelsea")[::2, ::2]).save(photo)
    spec, names = SMOKE[path.name], parameter_names(path)
    params = {**spec["parameters"], "MODEL": OTHER_MODEL, "PRETRAINED": False}
    for key in ("IMAGES", "FEATURE_IMAGES"):
        if key in names:
            params[key] = [str(photo), *params.get(key, ["chelsea", "coffee"])[1:]]
    for key in ("IMAGE", "LEFT"):
        if key in names:
            params[key] = str(photo)
    if "LAYERS" in names:  # the model's own layers (inv.default_layers), not the smoke run's
        params.update(LAYERS=None, LAYER_C=None)
    cells = json.loads(_run(path, tmp_path, params).read_text())["cells"]
    printed = "".join(t for c in cells if c["cell_type"] == "code" for o in c["outputs"]
                      for t in o.get("text", []))
    assert f"MODEL {OTHER_MODEL}: ResNet, 11.7 M parameters, random weights" in printed
    for fig in spec["figures"]:
        png = tmp_path / "figures" / fig
        assert png.exists() and png.stat().st_size > 10_000, f"{fig} missing or empty"


@pytest.mark.slow
def test_wrong_parameter_type_is_a_clear_error(tmp_path):
    path = NOTEBOOKS[0]
    with pytest.raises(pm.PapermillExecutionError, match="must be int, got str"):
        _run(path, tmp_path, {**SMOKE[path.name]["parameters"], "TOPK": "five"})
