"""The model-parameter randomisation test of Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018, Sec. 3.1: layers are re-initialised from the top one by one and each
method's maps are compared with the original ones by the paper's three similarities:
Spearman rank correlation of the signed maps, of their absolute values (a map that flips
sign but keeps its shape has not changed) and SSIM (Wang et al. 2004) of the maps scaled
to [0, 1]. A map that does not change with the weights fails.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.evaluation.harness import run_method


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B rank correlations of two batches of maps, ties given their average rank."""
    ra, rb = _average_ranks(a.flatten(1).double()), _average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)
    return (ra * rb).sum(1) / denom


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    ordered = values.sort(dim=1).values
    low = torch.searchsorted(ordered, values, right=False)
    high = torch.searchsorted(ordered, values, right=True)
    return (low + high - 1).double() / 2


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7,
         data_range: float = 1.0) -> torch.Tensor:
    """B mean structural similarities (Wang et al., IEEE TIP 2004, eq. 13) of two batches of
    B x H x W images: a uniform `window` x `window` window, sample covariances, K1 = 0.01,
    K2 = 0.03, averaged over the positions where the window fits (scikit-image's
    `structural_similarity` defaults)."""
    x, y = a[:, None].double(), b[:, None].double()
    mean = lambda t: F.avg_pool2d(t, window, stride=1)  # noqa: E731
    ux, uy = mean(x), mean(y)
    n = window * window
    cov = n / (n - 1)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Each map min-max scaled to [0, 1] (a constant map becomes zeros)."""
    flat = maps.flatten(1).double()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-30)).view_as(maps)


def similarities(original: torch.Tensor, maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-map similarities of Adebayo et al. 2018: `spearman` (signed), `abs_spearman`
    (of |map|) and `ssim` (of the maps scaled to [0, 1])."""
    return {"spearman": spearman(original, maps),
            "abs_spearman": spearman(original.abs(), maps.abs()),
            "ssim": ssim(unit_range(original), unit_range(maps))}


def parametrized_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own weights, from the output back to the input."""
    names = [name for name, m in model.named_modules()
             if name and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


@torch.no_grad()
def _reinitialize(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            p.normal_(0, 0.02)


def cascading_randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                            settings: dict[str, dict], stages: list[list[str]] | None = None,
                            seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Similarity of each method's maps on the trained model to its maps on copies whose
    layers are re-initialised cumulatively from the top (Adebayo et al. 2018).

    `stages`: groups of layer names randomised together, top first (default: one stage per
    parametrised layer). Returns {method: {"spearman" | "abs_spearman" | "ssim":
    (stages + 1) x B per-image values}}, row 0 the trained model (all ones).
    The targets stay the ones given, so every map explains the same class throughout.
    """
    stages = stages or [[name] for name in parametrized_layers(model)]
    original = {name: run_method(model, x, target, name, params)
                for name, params in settings.items()}
    rows = {name: [similarities(maps, maps)] for name, maps in original.items()}
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    torch.manual_seed(seed)
    for stage in stages:
        for layer in stage:
            _reinitialize(modules[layer])
        for name, params in settings.items():
            maps = run_method(randomised, x, target, name, params)
            rows[name].append(similarities(original[name], maps))
    return {name: {k: torch.stack([r[k] for r in found]).cpu() for k in found[0]}
            for name, found in rows.items()}
