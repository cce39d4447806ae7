"""The model-parameter randomisation test of Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018, Sec. 3.1: layers are re-initialised from the top one by one and each
method's maps are compared with the original ones by Spearman rank correlation; a map that
does not change with the weights fails.
"""

from __future__ import annotations

import copy

import torch
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
                            seed: int = 0) -> dict[str, list[float]]:
    """Mean Spearman correlation between each method's maps on the trained model and on
    copies whose layers are re-initialised cumulatively from the top (Adebayo et al. 2018).

    `stages`: groups of layer names randomised together, top first (default: one stage per
    parametrised layer). Returns {method: [1.0, after stage 1, after stage 2, ...]}.
    The targets stay the ones given, so every map explains the same class throughout.
    """
    stages = stages or [[name] for name in parametrized_layers(model)]
    original = {name: run_method(model, x, target, name, params)
                for name, params in settings.items()}
    curves = {name: [1.0] for name in settings}
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    torch.manual_seed(seed)
    for stage in stages:
        for layer in stage:
            _reinitialize(modules[layer])
        for name, params in settings.items():
            maps = run_method(randomised, x, target, name, params)
            curves[name].append(float(spearman(original[name], maps).mean()))
    return curves
