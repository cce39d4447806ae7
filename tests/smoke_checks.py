"""What a smoke run promises (tests/notebooks/smoke/<notebook>.json), checked on an executed
notebook. Shared by the papermill runs (tests/notebooks) and the browser runs
(tests/browser/test_widgets.py), which execute a notebook once where both would."""

from __future__ import annotations

import json
import math
from pathlib import Path

SMOKE_DIR = Path(__file__).parent / "notebooks" / "smoke"
CHROMIUM = Path("/usr/bin/chromium")


def smoke_spec(stem: str) -> dict:
    """The smoke file of notebooks/<stem>.ipynb: parameters, figures, expected records."""
    return json.loads((SMOKE_DIR / f"{stem}.json").read_text())


def browser_available() -> bool:
    """Whether the browser tests can run here (Chromium and Playwright installed)."""
    import importlib.util

    return CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None


def check_value(name: str, got, want) -> None:
    """`got` as `want` says: {"value", "tol"}, {"min", "max"}, a list or dict of such, or
    an exact value."""
    if isinstance(want, dict) and ("value" in want or "min" in want):
        assert isinstance(got, (int, float)) and math.isfinite(got), f"{name}: {got!r}"
        if "value" in want:
            assert abs(got - want["value"]) <= want["tol"], f"{name}: {got} vs {want}"
        else:
            assert want["min"] <= got <= want["max"], f"{name}: {got} not in {want}"
    elif isinstance(want, list) and want and isinstance(want[0], dict):
        assert isinstance(got, list) and len(got) == len(want), f"{name}: {got!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            check_value(f"{name}[{i}]", g, w)
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{name}: {got!r}"
        for key, sub in want.items():
            assert key in got, f"{name}: no {key!r} in {sorted(got)}"
            check_value(f"{name}.{key}", got[key], sub)
    else:
        assert got == want, f"{name}: {got!r} != {want!r}"


def check_executed(notebook: Path, figures: Path, spec: dict) -> None:
    """The executed `notebook` recorded what `spec` expects and wrote its figures."""
    from xai_utils.notebook import read_records

    records = read_records(notebook)
    for name, want in spec["expect"].items():
        assert name in records, f"{name} was not recorded; got {sorted(records)}"
        check_value(name, records[name], want)
    for fig in spec["figures"]:
        png = figures / fig
        assert png.exists() and png.stat().st_size > 10_000, f"{fig} missing or empty"
