"""Every notebook, executed by papermill with tiny parameters, must record what
smoke/<notebook>.json expects and write its figures; committed notebooks carry no outputs and one parameters cell."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE = {p.stem + ".ipynb": json.loads(p.read_text())
         for p in (Path(__file__).parent / "smoke").glob("*.json")}

pm = pytest.importorskip("papermill")


def _check(name: str, got, want) -> None:
    if isinstance(want, dict) and ("value" in want or "min" in want):
        assert isinstance(got, (int, float)) and math.isfinite(got), f"{name}: {got!r}"
        if "value" in want:
            assert abs(got - want["value"]) <= want["tol"], f"{name}: {got} vs {want}"
        else:
            assert want["min"] <= got <= want["max"], f"{name}: {got} not in {want}"
    elif isinstance(want, list) and want and isinstance(want[0], dict):
        assert isinstance(got, list) and len(got) == len(want), f"{name}: {got!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _check(f"{name}[{i}]", g, w)
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{name}: {got!r}"
        for key, sub in want.items():
            assert key in got, f"{name}: no {key!r} in {sorted(got)}"
            _check(f"{name}.{key}", got[key], sub)
    else:
        assert got == want, f"{name}: {got!r} != {want!r}"


def _run(path: Path, tmp_path: Path, parameters: dict) -> Path:
    out = tmp_path / path.name
    os.environ["XAI_FIGURES_DIR"] = str(tmp_path / "figures")
    try:
        pm.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                            cwd=str(path.parent), progress_bar=False)
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
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_records(path, tmp_path):
    from xai_utils.notebook import read_records

    spec = SMOKE[path.name]
    out = _run(path, tmp_path, spec["parameters"])
    records = read_records(out)
    for name, want in spec["expect"].items():
        assert name in records, f"{name} was not recorded; got {sorted(records)}"
        _check(name, records[name], want)
    for fig in spec["figures"]:
        png = tmp_path / "figures" / fig
        assert png.exists() and png.stat().st_size > 10_000, f"{fig} missing or empty"


@pytest.mark.slow
def test_wrong_parameter_type_is_a_clear_error(tmp_path):
    path = NOTEBOOKS[0]
    with pytest.raises(pm.PapermillExecutionError, match="must be int, got str"):
        _run(path, tmp_path, {**SMOKE[path.name]["parameters"], "TOPK": "five"})
