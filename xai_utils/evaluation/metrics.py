"""Scores for saliency maps, batched on the maps' device.

- `pointing_game`: a hit when the map's maximum lies within `tolerance` pixels of the
  ground-truth mask (Zhang et al. 2016; the 15-px tolerance of TorchRay's benchmark for
  images of 224 px and more, scaled with the image below by `pointing_tolerance`).
- `energy_in_mask`: share of the positive saliency that falls inside the mask.
- `deletion_auc` / `insertion_auc`: area under the target-probability curve as the most
  salient pixels are removed from, or revealed on, a baseline (Petsiuk et al. 2018, RISE);
  every step of every image is evaluated in large batches (channels-last, BatchNorms
  merged: the same outputs, faster on a CPU).
- `area`: the fraction of the image a mask keeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xai_utils.core.model_state import channels_last, merged_batchnorm
from xai_utils.core.ops import gaussian_blur, target_probability


def _disk(radius: int, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None] ** 2) <= radius**2).float()


def _argmax_yx(saliency: torch.Tensor) -> torch.Tensor:
    b, _, w = saliency.shape
    flat = saliency.reshape(b, -1).argmax(dim=1)
    return torch.stack([flat // w, flat % w], dim=1)


def pointing_tolerance(height: int, width: int) -> int:
    """TorchRay's 15 px for images of 224 px and more, scaled with the shorter side below
    (8 px at 112 px), so that the tolerance covers the same share of a smaller image."""
    return max(1, round(15 * min(1.0, min(height, width) / 224)))


def pointing_game(saliency: torch.Tensor, masks: torch.Tensor,
                  tolerance: int | None = None) -> torch.Tensor:
    """B bools: is each map's maximum within `tolerance` px of its mask (B x H x W each)?
    `tolerance=None`: `pointing_tolerance` of the image size."""
    if saliency.shape != masks.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and masks {tuple(masks.shape)} differ")
    if tolerance is None:
        tolerance = pointing_tolerance(*masks.shape[-2:])
    hits = grown(masks, tolerance)
    yx = _argmax_yx(saliency)
    return hits[torch.arange(len(yx), device=yx.device), yx[:, 0], yx[:, 1]]


def grown(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    """N x H x W masks grown by a disk of radius `tolerance` px (the pointing game's hits)."""
    masks = masks.bool()
    if tolerance <= 0:
        return masks
    kernel = _disk(tolerance, masks.device)[None, None]
    return F.conv2d(masks[:, None].float(), kernel, padding=tolerance)[:, 0] > 0.5


def energy_in_mask(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """B values in [0, 1]: positive saliency inside the mask over all positive saliency."""
    pos = saliency.clamp_min(0).flatten(1)
    inside = (pos * masks.flatten(1).to(pos.dtype)).sum(1)
    return inside / pos.sum(1).clamp_min(torch.finfo(pos.dtype).tiny)


def _ranks(saliency: torch.Tensor) -> torch.Tensor:
    """Rank of each pixel in its map, 0 = most salient (ties broken by position)."""
    flat = saliency.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks.view_as(saliency)


@torch.no_grad()
def probability_curve(model, start: torch.Tensor, finish: torch.Tensor, saliency: torch.Tensor,
                      target: torch.Tensor, steps: int = 32, batch_size: int = 64) -> torch.Tensor:
    """Target probability as the most salient pixels move from `start` to `finish`.

    Step s (0..steps) shows `finish` on the top s/steps fraction of pixels and `start`
    elsewhere. Returns B x (steps + 1) probabilities.
    """
    b, _, h, w = start.shape
    if saliency.shape != (b, h, w):
        raise ValueError(f"saliency must be {b} x {h} x {w}, got {tuple(saliency.shape)}")
    ranks = _ranks(saliency)
    counts = torch.linspace(0, h * w, steps + 1, device=start.device).round()
    curve = torch.empty(b, steps + 1, device=start.device)
    pairs = [(i, s) for i in range(b) for s in range(steps + 1)]
    with merged_batchnorm(model):
        for chunk in range(0, len(pairs), batch_size):
            idx = torch.tensor(pairs[chunk:chunk + batch_size], device=start.device)
            img, step = idx[:, 0], idx[:, 1]
            shown = (ranks[img] < counts[step, None, None])[:, None]
            inputs = channels_last(torch.where(shown, finish[img], start[img]))
            probs = target_probability(model(inputs), target[img])
            curve[img, step] = probs.to(curve.dtype)
    return curve


def _auc(curve: torch.Tensor) -> torch.Tensor:
    steps = curve.shape[1] - 1
    return torch.trapezoid(curve, dx=1.0 / steps, dim=1)


def _as_batch(baseline, x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(baseline).to(x).expand_as(x)


def deletion_auc(model, x, saliency, target, steps: int = 32, baseline=None,
                 batch_size: int = 64) -> torch.Tensor:
    """B values: AUC of the target probability as salient pixels are deleted (lower = better).

    Deleted pixels take `baseline` (default: zeros in the model's input space, i.e. the mean
    colour for normalised inputs).
    """
    finish = torch.zeros_like(x) if baseline is None else _as_batch(baseline, x)
    return _auc(probability_curve(model, x, finish, saliency, target, steps, batch_size))


def insertion_auc(model, x, saliency, target, steps: int = 32, baseline=None,
                  batch_size: int = 64) -> torch.Tensor:
    """B values: AUC of the target probability as salient pixels are revealed on a blurred
    copy of the image (higher = better)."""
    start = gaussian_blur(x) if baseline is None else _as_batch(baseline, x)
    return _auc(probability_curve(model, start, x, saliency, target, steps, batch_size))


def area(mask: torch.Tensor) -> torch.Tensor:
    """Mean value of each mask (the fraction of the image it keeps), B x ... -> B."""
    return mask.flatten(1).mean(1)
