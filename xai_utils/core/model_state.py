"""Temporary model state: equivalent rewrites, frozen parameters, memory layout, batch size.

Canonizers rewrite a model into an equivalent one that LRP's rules cover (Montavon et al.
2019, "Layer-Wise Relevance Propagation: An Overview", sec. 10.2; Motzkus et al. 2022 on
BatchNorm), and make forward-only loops faster:

- BatchNorm after a convolution or linear layer is merged into it, w' = w * g / s,
  b' = (b - mu) * g / s + beta with s = sqrt(var + eps); a BatchNorm with a fused activation
  (timm's BatchNormAct2d) keeps its activation. The pair is found in registration order (the
  convolution is the leaf module registered just before the BatchNorm, with as many output
  channels), which holds for torchvision's VGG/ResNet and timm's EfficientNets.
- In-place activations that get a rule are made out-of-place (their input is needed).
- Residual additions, global average pooling and flatten need no rewrite here: in the
  modified-gradient form (see rules.py) the gradient of a + b times each addend is already
  the proportional split R_a = a / (a + b) R, and average pooling is a linear map with
  positive weights whose gradient x input is the z-rule.

`canonized(model)` rewrites the model in place and restores every parameter object and
module in `finally`, so the user's model comes back unchanged even after an error.
`merged_batchnorm(model)` is the BatchNorm merge alone, for methods that only run forward
passes (occlusion, deletion curves): on a CPU they run 1.5-1.9x faster on EfficientNet-Lite0.
`frozen(model)` turns parameter gradients off for an optimisation over the input and restores
every flag in `finally`; `channels_last` and `forward_batch` set layout and batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# the one list of modules that pass values through unchanged in eval mode (IDENTITY_IN_EVAL)
# or only reshape them (PASS_THROUGH); methods that skip, trust or re-express modules extend it
IDENTITY_IN_EVAL = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                    nn.AlphaDropout)
PASS_THROUGH = (*IDENTITY_IN_EVAL, nn.Flatten, nn.Unflatten)
MERGEABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class MergedBatchNorm(nn.Module):
    """Stands in for a BatchNorm merged into the layer before it; keeps a fused activation."""

    def __init__(self, merged_into: str, tail: nn.Module | None = None) -> None:
        super().__init__()
        self.merged_into = merged_into
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(x)


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) for every BatchNorm right after a conv/linear layer."""
    pairs, previous = [], None
    for name, module in model.named_modules():
        if isinstance(module, BATCHNORM):
            if (previous is not None and isinstance(previous[1], MERGEABLE)
                    and _out_channels(previous[1]) == module.num_features):
                pairs.append((previous[0], name))
            previous = None
        elif not any(True for _ in module.children()):
            previous = (name, module)
    return pairs


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@torch.no_grad()
def merged_parameters(layer: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `layer` followed by `bn` in eval mode, as one layer."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    weight = layer.weight * scale.view(shape).to(layer.weight)
    bias = shift.to(layer.weight)
    if layer.bias is not None:
        bias = bias + layer.bias * scale.to(layer.weight)
    return weight, bias


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, child)


@contextmanager
def canonized(model: nn.Module, activations: tuple[type, ...] = ()) -> Iterator[list]:
    """Merge BatchNorms and make `activations` out-of-place for the duration of the block.

    Yields the list of merged (layer, BatchNorm) names. Raises if a BatchNorm is in training
    mode (its batch statistics cannot be merged).
    """
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, BATCHNORM) and module.training:
            raise ValueError(f"BatchNorm {name!r} is in training mode: call model.eval() first")
    saved_params: list[tuple[nn.Module, dict]] = []
    swapped: list[tuple[str, nn.Module]] = []
    inplace: list[nn.Module] = []
    pairs = batchnorm_pairs(model)
    try:
        for layer_name, bn_name in pairs:
            layer, bn = modules[layer_name], modules[bn_name]
            weight, bias = merged_parameters(layer, bn)
            saved_params.append((layer, dict(layer._parameters)))
            layer._parameters["weight"] = nn.Parameter(weight, layer.weight.requires_grad)
            layer._parameters["bias"] = nn.Parameter(bias, layer.weight.requires_grad)
            tail = None
            if hasattr(bn, "act"):  # timm BatchNormAct2d: bn -> drop -> act
                tail = nn.Sequential(getattr(bn, "drop", nn.Identity()), bn.act)
            swapped.append((bn_name, bn))
            _set_child(model, bn_name, MergedBatchNorm(layer_name, tail).train(bn.training))
        for module in model.modules():
            if isinstance(module, activations) and getattr(module, "inplace", False):
                module.inplace = False
                inplace.append(module)
        yield pairs
    finally:
        for module in inplace:
            module.inplace = True
        for name, bn in reversed(swapped):
            _set_child(model, name, bn)
        for layer, params in reversed(saved_params):
            layer._parameters.clear()
            layer._parameters.update(params)


@contextmanager
def merged_batchnorm(model: nn.Module) -> Iterator[list]:
    """`canonized(model)` for forward passes: BatchNorms merged into their layers (outputs
    equal up to float rounding, ~1e-5 in float32). A model with a BatchNorm in training mode
    is left as it is, and so is a plain function; hooks on a merged BatchNorm do not run
    inside the block."""
    if not isinstance(model, nn.Module) or any(
            isinstance(m, BATCHNORM) and m.training for m in model.modules()):
        yield []
    else:
        with canonized(model) as pairs:
            yield pairs


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients for the block (the input is optimised, not the model);
    every `requires_grad` flag is restored in `finally`."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [q.requires_grad for q in params]
    try:
        for q in params:
            q.requires_grad_(False)
        yield
    finally:
        for q, flag in zip(params, flags, strict=True):
            q.requires_grad_(flag)


@contextmanager
def single_threaded(device: torch.device | str) -> Iterator[None]:
    """One intra-op thread on a CPU for the block (many tiny ops lose to thread hand-offs);
    the previous setting is restored in `finally`."""
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """An image batch (B x C x H x W) in channels-last memory order (gradients pass): on a
    CPU the convolutions then run 1.4-1.7x faster; other tensors are returned as is."""
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


def forward_batch(height: int, width: int, device) -> int:
    """Images per forward pass for forward-only loops (occlusion): 256 on a GPU; on a CPU
    about 0.8 Mpixel (15 images of 224 px, 63 of 112 px), since bigger batches run slower
    per image there (EfficientNet-Lite0, 169 windows: 3.0 s at 15 per pass, 4.1 s at 32)."""
    if torch.device(device).type != "cpu":
        return 256
    return max(1, 800_000 // (height * width))


def model_device(model) -> torch.device:
    """The device of a model's first parameter (CPU for a parameter-free function)."""
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")
