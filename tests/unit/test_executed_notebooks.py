"""What `make figures` executed is what the repository shows: every notebook has an executed
copy in notebooks/executed/ with the same cells as its source, outputs and no error, its
figures inline as JPEG, and a "What we saw" equal to figures/<notebook>_summary.md."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def cells(nb: dict) -> list[tuple[str, str]]:
    """(type, source) of each cell, without the parameters papermill injected."""
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]
            if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_copy_is_this_notebook_run(path):
    executed = ROOT / "notebooks" / "executed" / path.name
    assert executed.exists(), f"{executed.relative_to(ROOT)} missing: run `make figures`"
    source, run = json.loads(path.read_text()), json.loads(executed.read_text())
    assert cells(run) == cells(source), (
        f"{path.name} changed after its executed copy was made: rerun "
        f"`python scripts/run_notebooks.py {path.relative_to(ROOT)}`")
    outputs = [o for c in run["cells"] for o in c.get("outputs", [])]
    assert outputs, f"{executed.name} has no outputs"
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{executed.name} holds errors: {errors}"
    assert not any("image/png" in o.get("data", {}) for o in outputs), "figures inline as PNG"
    assert run["metadata"]["papermill"]["parameters"].get("INTERACTIVE") is False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_summary_is_the_recorded_one(path):
    executed = ROOT / "notebooks" / "executed" / path.name
    if not executed.exists():
        pytest.fail(f"{executed.relative_to(ROOT)} missing: run `make figures`")
    shown = [text(o["data"]["text/markdown"]) for c in json.loads(executed.read_text())["cells"]
             for o in c.get("outputs", []) if "What we saw" in text(
                 o.get("data", {}).get("text/markdown", ""))]
    assert len(shown) == 1, f"{executed.name}: {len(shown)} rendered summaries"
    recorded = sorted((ROOT / "figures").glob(f"{path.stem}*_summary.md"))
    assert len(recorded) == 1, recorded
    assert shown[0].strip() == recorded[0].read_text().strip(), (
        f"{recorded[0].name} is not what {executed.name} shows")
