"""The colour policy in code: a sequential perceptual map for unsigned maps, a diverging one
centred at zero for signed maps, one scale across compared panels, no jet (only notebook 04
shows, on purpose, why jet and per-map min-max mislead)."""

import re
from pathlib import Path

import numpy as np
import torch

import xai_utils as xu

ROOT = Path(__file__).resolve().parents[2]


def test_no_jet_outside_the_notebook_that_shows_why():
    notebooks = [p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
                 if not p.name.startswith("04_")]
    files = [*sorted((ROOT / "xai_utils").rglob("*.py")),
             *sorted((ROOT / "benchmarks").glob("*.py")), *notebooks]
    jet = [str(p.relative_to(ROOT)) for p in files if re.search(r"[\"']jet[\"']", p.read_text())]
    assert not jet, f"jet colour map in {jet}"


def test_overlay_on_a_shared_scale():
    """Two maps, one twice the other, on one range: the weaker one is drawn dimmer (per-map
    min-max would draw both alike), and a signed map's zero is the diverging map's centre."""
    img = np.zeros((4, 4, 3))
    weak = torch.linspace(0, 1, 16).reshape(4, 4)
    lo, hi = xu.viz.scale([weak, 2 * weak])
    a, b = (xu.overlay(img, m, alpha=1.0, vmin=lo, vmax=hi) for m in (weak, 2 * weak))
    both = np.concatenate([weak.numpy(), 2 * weak.numpy()])
    assert lo == 0.0 and hi == np.float32(np.quantile(both, 0.99))
    assert a.sum() < b.sum()
    per_map = [xu.overlay(img, m, alpha=1.0) for m in (weak, 2 * weak)]
    np.testing.assert_allclose(per_map[0], per_map[1])
    lo, hi = xu.viz.scale([weak - 0.5], signed=True)
    assert lo == -hi
    centre = xu.overlay(img, torch.zeros(4, 4), alpha=1.0, vmin=lo, vmax=hi)
    import matplotlib
    np.testing.assert_allclose(centre[0, 0], matplotlib.colormaps[xu.viz.DIVERGING](0.5)[:3])
