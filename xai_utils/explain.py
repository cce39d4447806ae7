"""One verb for every saliency method: `explain(name, model, x, target)`.

Methods register themselves with `@register("name")`; each receives a validated batch and a
B-long tensor of target classes and returns an `Explanation`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., Explanation]] = {}


@dataclass
class Explanation:
    """A batch of saliency maps at input resolution (B x H x W, raw, not normalised)."""

    saliency: torch.Tensor
    target: torch.Tensor
    method: str = ""
    extras: dict = field(default_factory=dict)

    def normalized(self) -> torch.Tensor:
        """Each map min-max scaled to [0, 1] (constant maps become 0)."""
        flat = self.saliency.flatten(1)
        lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
        return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(self.saliency)


def register(name: str) -> Callable:
    """Decorator adding a method to the registry under `name`."""
    def add(fn: Callable) -> Callable:
        _REGISTRY[name] = fn
        return fn
    return add


def methods() -> list[str]:
    """Names accepted by `explain`."""
    return sorted(_REGISTRY)


def check_input(x: torch.Tensor) -> None:
    """Raise a clear error unless `x` is a finite B x C x H x W float tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor (use xu.preprocess), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be B x C x H x W, got shape {tuple(x.shape)}; "
                         "use x[None] for a single image")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {x.dtype}")


def resolve_target(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Target classes as a B-long tensor: None = top class; int or sequence otherwise."""
    batch = x.shape[0]
    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    t = torch.as_tensor(target, device=x.device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch}")
    info = getattr(model, "xai", None)
    if info is not None and info.num_classes:
        num_classes = info.num_classes
    else:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
    if (t < 0).any() or (t >= num_classes).any():
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise IndexError(f"class index {bad} is out of range for a model with "
                         f"{num_classes} classes (0..{num_classes - 1})")
    return t.contiguous()


def explain(name: str, model: nn.Module, x: torch.Tensor, target=None, **params) -> Explanation:
    """Explain `model`'s decision on the batch `x` with the method `name`.

    `target`: None explains the top class of each image; an int, a list or a tensor picks
    classes (one for all, or one per image). Extra keyword arguments go to the method.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(methods())}")
    check_input(x)
    target = resolve_target(model, x, target)
    result = _REGISTRY[name](model, x, target, **params)
    result.method = name
    return result
