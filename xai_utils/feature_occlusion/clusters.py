"""Feature extraction and feature occlusion (Dowling 2018, "Deep Introspection", ch. 3).

A relevance map (LRP, thesis 3.3.1) is turned into a few *features*, connected islands of
relevant pixels (thesis 3.3.2, the "modified flood fill"):

1. zero a border band of `border` pixels (the original zeroes 5 px: LRP piles relevance on
   the zero-padded edge), then normalise each map to sum 1;
2. keep the pixels with normalised relevance >= `threshold / (H * W)` (thesis: 5 / HW);
3. join kept pixels whose centres lie within `distance` px (1.5 px = 8-connectivity,
   1.0 px = 4-connectivity);
4. drop clusters of `min_size` pixels or fewer (thesis: 20).

Departures: the flood fill is replaced by vectorised label propagation on the whole batch
(each kept pixel starts with its own index; repeatedly take the maximum label over the
neighbourhood footprint inside the mask, plus pointer jumping), which yields the same
components. Only positive relevance forms features (`sign="positive"`); `sign="absolute"`
thresholds |r| instead. Features are numbered 1..n per image by decreasing relevance mass.

The occluders are in `occluder.py`, the metrics of thesis 3.5 in `metrics.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xai_utils.core.model_state import single_threaded


@dataclass
class Features:
    """Per-image label maps (0 = background, 1..n by decreasing relevance mass)."""

    labels: torch.Tensor        # B x H x W long
    relevance: torch.Tensor     # B x H x W, border zeroed, normalised to sum 1
    counts: list[int]           # number of features per image
    mass: list[torch.Tensor]    # normalised relevance per feature, per image
    sizes: list[torch.Tensor]   # pixels per feature, per image

    def masks(self, index: int = 0) -> torch.Tensor:
        """n x H x W bool masks of image `index`'s features (feature 1 first)."""
        ids = torch.arange(1, self.counts[index] + 1, device=self.labels.device)
        return self.labels[index][None] == ids[:, None, None]


def offsets(distance: float) -> list[tuple[int, int]]:
    """Pixel offsets (dy, dx) != (0, 0) with dy^2 + dx^2 <= distance^2."""
    r = int(math.floor(distance + 1e-9))
    lim = distance**2 + 1e-9
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if (dy or dx) and dy * dy + dx * dx <= lim]


def _neighbour_max(labels: torch.Tensor, distance: float) -> torch.Tensor:
    """Max of `labels` (B x H x W float) over the disk footprint of radius `distance`:
    one horizontal max-pool per half-width, then a vertical shift per row offset."""
    r = int(math.floor(distance + 1e-9))
    if r == 0:
        return labels
    h = labels.shape[1]
    padded = F.pad(labels, (0, 0, r, r))[:, None]
    best = labels
    rows: dict[int, torch.Tensor] = {}
    for dy in range(-r, r + 1):
        half = int(math.floor(math.sqrt(max(distance**2 + 1e-9 - dy * dy, 0.0))))
        if half not in rows:
            rows[half] = F.max_pool2d(padded, (1, 2 * half + 1), 1, (0, half))[:, 0]
        best = torch.maximum(best, rows[half][:, r + dy:r + dy + h])
    return best


def connected_components(mask: torch.Tensor, distance: float = 1.5,
                         max_iter: int = 100_000) -> torch.Tensor:
    """Label map (B x H x W long) of the components of `mask` under `distance`-adjacency.

    A component's label is 1 + the largest flat pixel index it contains; 0 off the mask.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be B x H x W, got {tuple(mask.shape)}")
    b, h, w = mask.shape
    if h * w >= 2**24:
        raise ValueError("images above 16M pixels are not supported")
    mask = mask.bool()
    with single_threaded(mask.device):  # these small ops lose to thread hand-offs on a CPU
        return _propagate(mask, distance, max_iter)


def _propagate(mask: torch.Tensor, distance: float, max_iter: int) -> torch.Tensor:
    b, h, w = mask.shape
    index = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, h, w)
    labels = torch.where(mask, index, 0.0)
    for _ in range(max_iter):
        best = torch.where(mask, _neighbour_max(labels, distance), 0.0).view(b, -1)
        # pointer jumping: a label names a pixel of the same component; adopt its label
        for _ in range(2):
            jumped = best.gather(1, (best.long() - 1).clamp_min(0))
            best = torch.where(best > 0, torch.maximum(best, jumped), 0.0)
        best = best.view(b, h, w)
        if torch.equal(best, labels):
            return labels.long()
        labels = best
    raise RuntimeError("label propagation did not converge")


def extract(relevance: torch.Tensor, threshold=5.0, distance: float = 1.5,
            min_size=20, border: int = 5, sign: str = "positive") -> Features:
    """Features of a batch of relevance maps (B x H x W), thesis 3.3.2.

    `threshold` is x in the pixel threshold x / (H W); clusters of <= `min_size` px dropped.
    Both may also be B-long sequences (one value per map, e.g. for a parameter grid).
    """
    if relevance.dim() == 2:
        relevance = relevance[None]
    if relevance.dim() != 3:
        raise ValueError(f"relevance must be B x H x W, got {tuple(relevance.shape)}")
    if sign not in ("positive", "absolute"):
        raise ValueError(f"sign must be 'positive' or 'absolute', got {sign!r}")
    b, h, w = relevance.shape
    rel = relevance.detach().to(torch.float64 if relevance.dtype == torch.float64
                                else torch.float32).clone()
    if border > 0:
        rel[:, :border], rel[:, -border:] = 0, 0
        rel[:, :, :border], rel[:, :, -border:] = 0, 0
    total = rel.flatten(1).sum(1)
    absolute = rel.abs().flatten(1).sum(1)
    total = torch.where(total > 0, total, absolute).clamp_min(torch.finfo(rel.dtype).tiny)
    rel = rel / total[:, None, None]
    score = rel if sign == "positive" else rel.abs()
    thr = torch.as_tensor(threshold, dtype=rel.dtype, device=rel.device).reshape(-1, 1, 1)
    keep = score >= thr / (h * w)
    raw = connected_components(keep, distance)
    # size, mass and rank of every component, all images at once
    key = (torch.arange(b, device=rel.device)[:, None, None] * (h * w + 1) + raw)[keep]
    uniq, inverse = torch.unique(key, return_inverse=True)
    size = torch.bincount(inverse, minlength=len(uniq))
    mass = torch.zeros(len(uniq), dtype=rel.dtype, device=rel.device)
    mass.index_add_(0, inverse, score[keep])
    image = uniq // (h * w + 1)
    smallest = torch.as_tensor(min_size, device=rel.device).reshape(-1).expand(b)
    alive = size > smallest[image]
    order = torch.argsort(torch.where(alive, -mass, math.inf), stable=True)
    order = order[torch.argsort(image[order], stable=True)]
    rank = torch.empty_like(order)
    counts = torch.bincount(image[alive], minlength=b)
    first = torch.searchsorted(image[order], torch.arange(b, device=rel.device))
    rank[order] = torch.arange(len(order), device=rel.device) - first[image[order]]
    new = torch.where(alive, rank + 1, 0)
    labels = torch.zeros(b, h, w, dtype=torch.long, device=rel.device)
    labels[keep] = new[inverse]
    n = counts.tolist()
    ranked = [order[first[i]:first[i] + n[i]] for i in range(b)]
    return Features(labels, rel, n, [mass[o] for o in ranked], [size[o] for o in ranked])


def drop_small(labels: torch.Tensor, min_size: int) -> tuple[torch.Tensor, list[int]]:
    """Drop features of <= `min_size` px from label maps (B x H x W), keeping their order;
    returns the renumbered maps and the feature counts (cheap: no new clustering)."""
    b = labels.shape[0]
    n = int(labels.max()) + 1 if labels.numel() else 1
    offset = n * torch.arange(b, device=labels.device)[:, None]
    size = torch.bincount((labels.flatten(1) + offset).flatten(), minlength=b * n).view(b, n)
    alive = size > min_size
    alive[:, 0] = False
    new = alive.cumsum(1) * alive
    return new.gather(1, labels.flatten(1)).view_as(labels), alive.sum(1).tolist()
