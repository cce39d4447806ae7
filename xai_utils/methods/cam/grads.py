"""The shared work of CAM and Grad-CAM: one forward pass recording layers (autograd only from
the first of them on), gradients of the target logits with respect to their outputs, the
channel-weighted sum and the upsampling (see base.py for the equations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.core.hooks import capture, get_layer
from xai_utils.core.registry import class_indices


@contextmanager
def _autograd_from(modules: list[nn.Module]) -> Iterator[None]:
    """Inside an outer `no_grad` forward, turn autograd on from the first of `modules` that
    runs: its output becomes a fresh leaf (cloned, so later in-place ops are allowed), so no
    graph is recorded, and no backward runs, through the layers below it."""
    started = False

    def hook(_module, _inputs, output):
        nonlocal started
        if started or not isinstance(output, torch.Tensor):
            return None
        started = True
        torch.set_grad_enabled(True)  # undone when the caller's no_grad block exits
        return output.detach().requires_grad_(True).clone()

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def activations_and_gradients(model: nn.Module, x: torch.Tensor, layers: list[str],
                              targets: torch.Tensor | None = None, topk: int = 1,
                              gradients: bool = True, validate=None):
    """One forward pass recording `layers`; then, per target column, the gradient of the
    summed target logits with respect to every recorded activation.

    Returns (activations {layer: B x ...}, gradients {layer: B x T x ...}, logits B x C,
    targets B x T), the layers' outputs as they are (see `to_maps`). `targets` None takes
    the `topk` classes of each image; `validate(name, activation)` runs before any backward.
    """
    modules = [get_layer(model, name) for name in layers]
    cut = _autograd_from(modules) if gradients else nullcontext()
    with torch.no_grad(), cut, capture(model, layers, detach=not gradients) as rec:
        logits = model(x.detach())
    missing = [n for n in layers if n not in rec.activations]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    acts = [rec.activations[n] for n in layers]
    if validate is not None:
        for name, act in zip(layers, acts, strict=True):
            validate(name, act)
    num_classes = logits.shape[1]
    if targets is None:
        targets = logits.detach().topk(min(topk, num_classes), dim=1).indices
    else:
        targets = class_indices(targets, x.shape[0], x.device, num_classes)
    grads: dict[str, torch.Tensor] = {}
    if gradients:
        scores = logits.gather(1, targets)
        per_target = [torch.autograd.grad(scores[:, t].sum(), acts,
                                          retain_graph=t < targets.shape[1] - 1)
                      for t in range(targets.shape[1])]
        grads = {n: torch.stack([g[i] for g in per_target], 1) for i, n in enumerate(layers)}
    return ({n: a.detach() for n, a in zip(layers, acts, strict=True)}, grads,
            logits.detach(), targets)


def weighted_sum(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_tk A_k: (B x K x h x w, B x T x K) -> B x T x h x w."""
    return torch.einsum("btk,bkhw->bthw", weights.to(activations.dtype), activations)


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of B x T x h x w maps to `size`."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
