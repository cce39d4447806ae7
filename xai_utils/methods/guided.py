"""Guided backpropagation (Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for
Simplicity: The All Convolutional Net", ICLR workshop 2015, Fig. 1): the gradient, except that
each ReLU passes back only positive gradients (and, as always, only where its input was
positive); and Guided Grad-CAM (Selvaraju et al., ICCV 2017, Sec. 3.1): guided
backpropagation times the Grad-CAM map upsampled to the input.

The ReLUs are the model's `nn.ReLU` and `nn.ReLU6` modules (in-place ones included, called
once or many times, as torchvision's ResNets do): a forward hook puts a guiding step after
each. A ReLU written as a function call inside `forward` cannot be hooked; a model without
any ReLU module (GELU transformers) is refused by name. As Captum's, the map ignores ReLUs
that are not modules. The map is the maximum over colour channels of the absolute value;
`extras["attribution"]` keeps the signed per-channel result.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.core.registry import Explanation, MethodNotApplicable, register
from xai_utils.methods.cam import GradCAM

RELUS = (nn.ReLU, nn.ReLU6)


class _Guide(torch.autograd.Function):
    """Identity forward; backward keeps positive gradients where the ReLU's output is > 0."""

    @staticmethod
    def forward(ctx, out):
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad.clamp_min(0) * (out > 0)


@contextmanager
def guided(model: nn.Module) -> Iterator[None]:
    """Inside the block, every ReLU module of `model` guides the gradient (hooks removed in
    `finally`); raises `MethodNotApplicable` for a model without ReLU modules."""
    relus = [m for m in model.modules() if isinstance(m, RELUS)]
    if not relus:
        raise MethodNotApplicable(
            f"{type(model).__name__} has no nn.ReLU / nn.ReLU6 modules to guide (its "
            "activations are other functions, or ReLUs called as functions); guided "
            "backpropagation is defined for ReLU networks")
    handles = [m.register_forward_hook(lambda _m, _i, out: _Guide.apply(out)) for m in relus]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _guided_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with guided(model):
        score = model(x).gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad


@register("guided_backprop")
def guided_backprop(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Explanation:
    """Guided backpropagation (see the module docstring)."""
    grad = _guided_gradient(model, x, target)
    return Explanation(grad.abs().amax(dim=1), target, extras={"attribution": grad})


@register("guided_gradcam")
def guided_gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   layer: str | None = None, interpolation: str = "bilinear") -> Explanation:
    """Guided Grad-CAM: guided backpropagation times Grad-CAM on `layer`, upsampled with
    `interpolation` ("bilinear" as the paper; "nearest" as Captum's default)."""
    cam = GradCAM(model, layer)(x, target)
    low = cam.lowres[:, :1]
    mode = {"mode": interpolation} | ({} if interpolation == "nearest"
                                      else {"align_corners": False})
    up = F.interpolate(low, size=x.shape[-2:], **mode)
    attribution = _guided_gradient(model, x, target) * up
    return Explanation(attribution.abs().amax(dim=1), target,
                       extras={"attribution": attribution, "gradcam": up[:, 0],
                               "layer": cam.layer})
