"""`make gpu-check` (scripts/gpu_check.py): it must run where there is no GPU too."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check")
def test_without_cuda_it_says_so_and_succeeds(capsys, tmp_path):
    assert _script().main(["--out", str(tmp_path / "report.md")]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_dry_run_checks_every_method(tmp_path):
    """CPU against CPU: every method must agree with itself and leave nothing behind."""
    import xai_utils as xu

    out = tmp_path / "report.md"
    assert _script().main(["--dry-run", "--out", str(out)]) == 0
    report = out.read_text()
    for section in ("(a) CPU against GPU", "(b) Memory", "(c) Speed", "(d) The optimisation",
                    "(e) The dataset runner"):
        assert section in report
    assert "| torchrun x1 (gloo) | 8 | yes | 0.00e+00 |" in report
    for name in xu.methods():
        assert f"| shapes_vgg | {name} | 0.00e+00 | 1.0000 |" in report
