"""One call per registered method with evaluation-sized parameters, and its scores.

- `method_settings` / `run_method`: keyword arguments for every method of the registry
  (iterative methods at a chosen number of steps, each method's own `evaluation` settings
  from `register(...)`), and maps computed a batch at a time.
- `per_image` / `quality`: pointing game, energy in mask, deletion and insertion AUC
  (`metrics`) per image, and their means with bootstrap intervals (`stats`), with a centre
  and a random map as the floor (`baseline_maps`).
"""

from __future__ import annotations

import torch
from torch import nn

from xai_utils.core.inputs import model_info
from xai_utils.core.model_state import model_device
from xai_utils.core.registry import explain, method_info, methods
from xai_utils.evaluation import metrics, stats


def method_settings(model: nn.Module, steps: int | None = None) -> dict[str, dict]:
    """Keyword arguments per registered method for an evaluation run on `model`.

    `steps` caps the iterations of the optimisation methods (None: each method's default,
    the papers' 300 to 1000); other settings come from each method's registration (e.g.
    occlusion: a window of 1/7 of the input side, half of it as stride).
    """
    side = model_info(model).input_size
    device = model_device(model)
    table = {}
    for name in methods():
        info = method_info(name)
        params = info.evaluation(side, device) if info.evaluation else {}
        if info.iterative:
            params |= {"progress": False} | ({} if steps is None else {"steps": steps})
        table[name] = params
    return table


def run_method(model: nn.Module, x: torch.Tensor, target: torch.Tensor, name: str,
               params: dict | None = None, batch_size: int = 100) -> torch.Tensor:
    """B x H x W saliency of `name` for the batch, computed `batch_size` images at a time."""
    params = params or {}
    maps = [explain(name, model, x[i:i + batch_size], target[i:i + batch_size], **params)
            .saliency.detach() for i in range(0, len(x), batch_size)]
    return torch.cat(maps)


def baseline_maps(kind: str, n: int, height: int, width: int, seed: int = 0,
                  device=None) -> torch.Tensor:
    """Floors for every score: "centre" (peak at the image centre) or "random" (uniform)."""
    if kind == "centre":
        yy = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
        xx = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
        centre = -(yy[:, None] ** 2 + xx[None] ** 2)
        return (centre - centre.min()).expand(n, -1, -1).contiguous()
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, height, width, generator=gen).to(device)
    raise ValueError(f"unknown baseline {kind!r}: use 'centre' or 'random'")


def per_image(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
              masks: torch.Tensor | None = None, auc_images: int | None = None,
              auc_steps: int = 16, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Per-image scores of `maps` for `model` on `x` (CPU tensors): pointing game (0 / 1)
    and energy in mask when `masks` is given, deletion / insertion AUC on the first
    `auc_images` images (None: all)."""
    scores: dict[str, torch.Tensor] = {}
    if masks is not None:
        scores["pointing_game"] = metrics.pointing_game(maps, masks).float().cpu()
        scores["energy_in_mask"] = metrics.energy_in_mask(maps, masks).float().cpu()
    k = len(x) if auc_images is None else min(auc_images, len(x))
    if k:
        args = (model, x[:k], maps[:k], target[:k], auc_steps)
        scores["deletion_auc"] = metrics.deletion_auc(*args, batch_size=batch_size).cpu()
        scores["insertion_auc"] = metrics.insertion_auc(*args, batch_size=batch_size).cpu()
    return scores


def summarise(per: dict[str, torch.Tensor], images: int, intervals: bool = True,
              seed: int = 0) -> dict:
    """Means of `per_image` scores, the number of images and of those with AUCs; with
    `intervals`, each mean's 95% bootstrap interval over images (`<metric>_ci`: [low, high])."""
    out: dict = {"images": images}
    for name, values in per.items():
        out[name] = float(values.double().mean())
        if intervals:
            out[f"{name}_ci"] = list(stats.bootstrap_ci(values, seed=seed)[1:])
    if "deletion_auc" in per:
        out["auc_images"] = len(per["deletion_auc"])
    return out


def quality(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
            masks: torch.Tensor | None = None, auc_images: int | None = None,
            auc_steps: int = 16, batch_size: int = 128) -> dict:
    """Mean scores of `maps` (`summarise` of `per_image`, without intervals)."""
    return summarise(per_image(model, x, target, maps, masks, auc_images, auc_steps,
                               batch_size), len(x), intervals=False)


def pointing_geometry(masks: torch.Tensor, tolerance: int | None = None) -> dict[str, float]:
    """What the pointing game rewards on a set of ground-truth masks (N x H x W): the share
    of the image inside the masks, the share within `tolerance` px of them (a hit region;
    None: `metrics.pointing_tolerance`), the mean distance of the masks' centroids from the
    image centre, and how often the centre pixel itself is a hit (the centre baseline)."""
    h, w = masks.shape[-2:]
    tol = metrics.pointing_tolerance(h, w) if tolerance is None else tolerance
    m = masks.float()
    near = metrics.grown(masks, tol)
    yy = torch.arange(h, dtype=torch.float32, device=m.device)[:, None]
    xx = torch.arange(w, dtype=torch.float32, device=m.device)[None]
    area = m.sum((1, 2)).clamp_min(1)
    cy, cx = (m * yy).sum((1, 2)) / area, (m * xx).sum((1, 2)) / area
    return {"size": h, "tolerance": tol, "mask_area": float(m.mean()),
            "hit_area": float(near.float().mean()),
            "centroid_to_centre": float(((cy - (h - 1) / 2) ** 2
                                         + (cx - (w - 1) / 2) ** 2).sqrt().mean()),
            "centre_is_hit": float(near[:, (h - 1) // 2, (w - 1) // 2].float().mean())}


def peaks_on_own_half(maps: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """B bools: does each map of a side-by-side composite peak on its class's half?
    `left[i]` is True when image i's class is the one on the left."""
    width = maps.shape[-1]
    column = maps.flatten(1).argmax(1) % width
    return (column < width // 2) == left.to(column.device)
