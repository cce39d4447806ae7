"""Which method works on which architecture: every method of `xu.methods()` on the zoo
contract's models (random weights, small inputs, 3 steps; see tests/unit/test_zoo.py),
printed as a markdown table (works / refuses, with the reasons below it).

    python benchmarks/zoo_matrix.py            # the table README.md shows under "Models"
"""

from __future__ import annotations

import re
import warnings

import torch

import xai_utils as xu
from xai_utils.evaluation.harness import method_settings
from xai_utils.models.zoo import CONTRACT_MODELS


def cell(model: torch.nn.Module, method: str, side: int) -> str | None:
    """None when the method gives a finite map of the input's size, else the refusal."""
    params = dict(method_settings(model, steps=3)[method])
    if method == "occlusion":
        params.update(window=side // 2, stride=side // 2)
    if xu.method_info(method).stochastic:
        params["seed"] = 0
    x = xu.input_spec(model).normalize(torch.rand(2, 3, side, side,
                                                  generator=torch.Generator().manual_seed(0)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            maps = xu.explain(method, model, x, **params).saliency
    except xu.MethodNotApplicable as exc:
        return str(exc)
    if maps.shape != (2, side, side) or not torch.isfinite(maps).all():
        return f"BROKEN: a {tuple(maps.shape)} map, finite: {bool(torch.isfinite(maps).all())}"
    return None


def short(reason: str) -> str:
    """A refusal's gist for the table cell."""
    if reason.startswith("CAM needs"):
        return "refuses: head"
    match = re.search(r"\(([A-Za-z0-9]+)\)", reason)
    return f"refuses: {match.group(1)}" if match else "refuses"


def main() -> None:
    torch.set_num_threads(1)
    methods = xu.methods()
    rows, reasons = [], {}
    for name, kwargs, side in CONTRACT_MODELS:
        torch.manual_seed(0)
        model = xu.load_model(name, pretrained=False, device_="cpu", **kwargs)
        cells = []
        for method in methods:
            reason = cell(model, method, side)
            if reason is None:
                cells.append("works")
            else:
                cells.append(short(reason))
                reasons.setdefault(reason, []).append(f"{method} on {name}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    print("| model | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    print("\n".join(rows))
    print("\nRefusals (`xu.MethodNotApplicable`, raised before the heavy work):\n")
    for reason, where in reasons.items():
        print(f"- {', '.join(where)}: {reason}")


if __name__ == "__main__":
    main()
