"""Heatmap overlays and the one helper that writes every figure. matplotlib is imported
when a map is coloured, not with the package (`import xai_utils` does not load it)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

FIGURES_DIR = Path(__file__).resolve().parents[2] / "figures"


def normalize(saliency, clip: float = 1.0) -> np.ndarray:
    """A map (H x W tensor or array) min-max scaled to [0, 1] as a NumPy array.

    `clip` < 1 saturates the top values at that quantile (gradient maps are spiky).
    """
    if isinstance(saliency, torch.Tensor):
        saliency = saliency.detach().float().cpu().numpy()
    sal = np.asarray(saliency, dtype=np.float32)
    lo = float(sal.min())
    hi = float(np.quantile(sal, clip)) if clip < 1 else float(sal.max())
    sal = np.minimum(sal, hi)
    return (sal - lo) / (hi - lo) if hi > lo else np.zeros_like(sal)


# The colour policy (see README "Reporting results"): unsigned maps on one perceptual
# sequential colour map, signed maps on a diverging one centred at zero, one scale across
# panels that are compared, a labelled colour bar on every heat map.
SEQUENTIAL, DIVERGING = "inferno", "RdBu_r"


def scale(maps, signed: bool = False, q: float = 0.99) -> tuple[float, float]:
    """One colour range (vmin, vmax) for maps compared side by side: [0, q-quantile] of the
    maps' values for unsigned maps, [-l, l] with l the q-quantile of |map| for signed ones."""
    limit = shared_limit(maps, q) if signed else float(np.quantile(
        torch.stack([torch.as_tensor(m).detach().float().cpu().clamp_min(0)
                     for m in maps]).numpy(), q))
    limit = limit if limit > 0 else 1.0
    return (-limit, limit) if signed else (0.0, limit)


def overlay(image, saliency, alpha: float = 0.5, cmap: str | None = None, clip: float = 1.0,
            positive: bool = False, vmin: float | None = None,
            vmax: float | None = None) -> np.ndarray:
    """Blend a colour-mapped saliency map onto an image; both H x W; returns H x W x 3 in [0, 1].

    The map is resized to the image if needed. With `vmin` / `vmax` (from `scale`, shared by
    the panels being compared) it is drawn on that fixed range, and `colorbar` labels it;
    without them it is min-max normalised per map (each panel on its own scale: only for a
    single picture, never for comparisons). `cmap` defaults to the policy's sequential map,
    or its diverging one when `vmin` < 0. `alpha` is the weight of the heatmap;
    `positive` shows only the evidence for the class (negative values as 0); `clip` < 1
    saturates the top values at that quantile (see `normalize`).
    """
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    if img.max() > 1.0:
        img = img / 255.0
    sal = saliency
    if isinstance(sal, torch.Tensor):
        sal = sal.detach().float().cpu()
        if tuple(sal.shape[-2:]) != img.shape[:2]:
            sal = torch.nn.functional.interpolate(sal[None, None], size=img.shape[:2],
                                                  mode="bilinear", align_corners=False)[0, 0]
    if positive:
        sal = sal.clamp_min(0) if isinstance(sal, torch.Tensor) else np.maximum(sal, 0)
    signed = vmin is not None and vmin < 0
    cmap = cmap or (DIVERGING if signed else SEQUENTIAL)
    if vmin is None or vmax is None:
        values = normalize(sal, clip)
    else:
        values = np.clip((np.asarray(sal, dtype=np.float32) - vmin) / (vmax - vmin), 0, 1)
    heat = matplotlib.colormaps[cmap](values)[..., :3]
    if heat.shape[:2] != img.shape[:2]:
        raise ValueError(f"saliency {heat.shape[:2]} does not match image {img.shape[:2]}")
    return np.clip((1 - alpha) * img + alpha * heat, 0, 1)


def colorbar(fig, axes, vmin: float, vmax: float, label: str, cmap: str | None = None,
             **kwargs):
    """A labelled colour bar for maps drawn with `overlay(..., vmin=, vmax=)` (or `imshow`
    on that range) on `axes`; `cmap` defaults as in `overlay`."""
    import matplotlib

    cmap = cmap or (DIVERGING if vmin < 0 else SEQUENTIAL)
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(vmin, vmax), cmap)
    bar = fig.colorbar(mappable, ax=axes, **kwargs)
    bar.set_label(label)
    return bar


def figures_dir() -> Path:
    """Where figures go: `XAI_FIGURES_DIR` if set (tests use a temp dir), else figures/."""
    return Path(os.environ.get("XAI_FIGURES_DIR", FIGURES_DIR))


LARGE_PNG = 2_000_000  # bytes: a saved figure above this is stored with a 256-colour palette


def save_figure(fig, name: str, dpi: int = 110) -> Path:
    """Save a matplotlib figure as figures/<name>.png and return the path. A file over
    `LARGE_PNG` bytes (many photo panels) is re-encoded with a 256-colour palette (dithered),
    which keeps the repository small at no visible cost."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"figure name must be a plain file name, got {name!r}")
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / (name if name.endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    if path.stat().st_size > LARGE_PNG:
        palette_png(path)
    return path


def palette_png(path: Path) -> None:
    """Re-encode a PNG in place with a 256-colour adaptive palette."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    palette = rgb.quantize(256, method=Image.Quantize.MEDIANCUT)
    rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)


def shared_limit(maps, q: float = 0.99) -> float:
    """One colour limit for maps drawn side by side: the q-quantile of |map| over all."""
    values = torch.stack([torch.as_tensor(m).detach().float().cpu() for m in maps]).abs()
    return float(np.quantile(values.numpy(), q))


def heat(ax, image, saliency, limit: float, signed: bool = False, alpha: float = 0.6):
    """Draw `saliency` over a light-grey copy of `image` (H x W x 3 array or 3 x H x W
    tensor) on a fixed scale: [0, limit] in the sequential colour map, or with `signed`
    [-limit, limit] in the diverging one centred at zero (blue < 0 < red). Returns the artist
    for a colour bar; maps compared side by side should share `limit` (`shared_limit`)."""
    img = image.permute(1, 2, 0).cpu() if isinstance(image, torch.Tensor) else image
    ax.imshow(np.asarray(img, dtype=np.float32).mean(-1), cmap="gray", vmin=-0.5, vmax=1)
    ax.axis("off")
    sal = torch.as_tensor(saliency).detach().float().cpu()
    return ax.imshow(sal, alpha=alpha, cmap=DIVERGING if signed else SEQUENTIAL,
                     vmin=-limit if signed else 0, vmax=limit)
