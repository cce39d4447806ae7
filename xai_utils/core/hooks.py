"""Removable activation and gradient hooks.

`capture` registers forward hooks on named layers for the duration of a `with` block and
removes every one of them in `finally`, so nothing stays registered after success or an
exception. Gradients are caught with tensor hooks on the captured outputs, which die with
the tensors (no backward hooks on modules, which break on in-place activations).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name` (as in `model.named_modules()`), or a clear error."""
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, [n for n in modules if n], n=5)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise ValueError(f"{type(model).__name__} has no layer {name!r}.{hint} "
                     "List them with [n for n, _ in model.named_modules()].")


@dataclass
class Capture:
    """What `capture` recorded: activations and (after backward) gradients, by layer name."""

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture(model: nn.Module, layers: str | Sequence[str], gradients: bool = False,
            detach: bool = True) -> Iterator[Capture]:
    """Record the outputs (and optionally their gradients) of `layers` during the block.

    >>> with capture(model, "features.28", gradients=True) as rec:
    ...     model(x)[:, c].sum().backward()
    >>> rec.activations["features.28"], rec.gradients["features.28"]
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    record = Capture()
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            record.activations[name] = output.detach() if detach else output
            if gradients and output.requires_grad:
                def keep(grad, name=name):
                    record.gradients[name] = grad.detach()
                output.register_hook(keep)
        return hook

    try:
        for name in names:
            handles.append(get_layer(model, name).register_forward_hook(make_hook(name)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


def registered_hooks(model: nn.Module) -> int:
    """Number of forward/backward hooks currently registered anywhere in `model`."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks)
        total += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    return total
