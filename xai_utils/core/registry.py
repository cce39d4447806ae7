"""One verb for every saliency method: `explain(name, model, x, target)`.

Methods register themselves with `@register("name", ...)`, which also records what the
rest of the package needs to know about them (`MethodInfo`: whether they iterate, their
evaluation-size settings, what they require of a model); each receives a validated batch
and a B-long tensor of target classes and returns an `Explanation`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from xai_utils.core.inputs import model_info
from xai_utils.core.ops import minmax

_REGISTRY: dict[str, MethodInfo] = {}

REQUIREMENTS = {
    "gradients": "backpropagates through the model",
    "gap_linear_head": "a head of global average pooling and one linear layer",
    "input_bounds": "the input's pixel bounds (from the model's preprocessing)",
}


class MethodNotApplicable(ValueError):
    """A method that does not apply to this model (or layer): the message names the layer
    and the reason, and is raised before any heavy work where that can be known."""


@dataclass
class Explanation:
    """A batch of saliency maps at input resolution (B x H x W, raw, not normalised)."""

    saliency: torch.Tensor
    target: torch.Tensor
    method: str = ""
    extras: dict = field(default_factory=dict)

    def normalized(self) -> torch.Tensor:
        """Each map min-max scaled to [0, 1] (constant maps become 0)."""
        return minmax(self.saliency)


@dataclass(frozen=True)
class MethodInfo:
    """A registered method and what callers need to know about it.

    `iterative`: optimises over `steps` iterations (accepts `steps=` and `progress=`).
    `stochastic`: draws random numbers (accepts `seed=`; the same seed gives the same map).
    `requires`: keys of `REQUIREMENTS` the model must satisfy.
    `evaluation`: (input side, device) -> keyword arguments for an evaluation-sized run.
    `options`: for a method taking `**options`, the dataclass whose fields they set.
    `probe`: input side -> keyword arguments that make one run cheap, for the check a dataset
    run makes before it starts (iterative methods get `steps=1` without it).
    """

    name: str
    fn: Callable[..., Explanation]
    iterative: bool = False
    stochastic: bool = False
    requires: tuple[str, ...] = ()
    evaluation: Callable[[int, torch.device], dict] | None = None
    options: type | None = None
    probe: Callable[[int], dict] | None = None


def register(name: str, *, iterative: bool = False, stochastic: bool = False,
             requires: tuple[str, ...] = ("gradients",),
             evaluation: Callable[[int, torch.device], dict] | None = None,
             options: type | None = None,
             probe: Callable[[int], dict] | None = None) -> Callable:
    """Decorator adding a method to the registry under `name` (see `MethodInfo`)."""
    unknown = set(requires) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"unknown requirements {sorted(unknown)}; known: {sorted(REQUIREMENTS)}")

    def add(fn: Callable) -> Callable:
        _REGISTRY[name] = MethodInfo(name, fn, iterative, stochastic, tuple(requires),
                                     evaluation, options, probe)
        return fn
    return add


def methods() -> list[str]:
    """Names accepted by `explain`."""
    return sorted(_REGISTRY)


def method_info(name: str) -> MethodInfo:
    """The registry entry of `name` (a clear error for unknown names)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Available: {', '.join(methods())}")
    return _REGISTRY[name]


def check_input(x: torch.Tensor) -> None:
    """Raise a clear error unless `x` is a finite B x C x H x W float tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor (use xu.preprocess), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"x must be B x C x H x W, got shape {tuple(x.shape)}; "
                         "use x[None] for a single image")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {x.dtype}")


def class_indices(targets, batch: int, device=None, num_classes: int | None = None
                  ) -> torch.Tensor:
    """The one reading of an explicit target: an int (every image), B indices (one per
    image) or B x T (T classes per image) -> a B x T LongTensor, each index checked against
    `num_classes` when given."""
    t = torch.as_tensor(targets, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {t.dtype}")
    t = t.long()
    t = t.expand(batch) if t.dim() == 0 else t
    if t.dim() == 1 and t.numel() != batch:
        raise ValueError(f"got {t.numel()} targets for a batch of {batch}")
    t = t[:, None] if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[0] != batch:
        raise ValueError(f"target must be an int, B or B x T class indices for a batch of "
                         f"{batch}, got shape {tuple(t.shape)}")
    if num_classes and ((t < 0) | (t >= num_classes)).any():
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise IndexError(f"class index {bad} is out of range for a model with "
                         f"{num_classes} classes (0..{num_classes - 1})")
    return t


def resolve_target(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    """Target classes as a B-long tensor: None = top class; int or B indices otherwise."""
    batch = x.shape[0]
    if target is None:
        with torch.no_grad():
            return model(x).argmax(dim=1)
    num_classes = model_info(model).num_classes
    if not num_classes:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
    t = class_indices(target, batch, x.device, num_classes)
    if t.shape[1] != 1:
        raise ValueError(f"explain() takes one target per image, got {t.shape[1]}")
    return t[:, 0].contiguous()


def explain(name: str, model: nn.Module, x: torch.Tensor, target=None, **params) -> Explanation:
    """Explain `model`'s decision on the batch `x` with the method `name`.

    `target`: None explains the top class of each image; an int, a list or a tensor picks
    classes (one for all, or one per image). Extra keyword arguments go to the method.
    """
    info = method_info(name)
    check_input(x)
    target = resolve_target(model, x, target)
    result = info.fn(model, x, target, **params)
    result.method = name
    return result
