"""Grad-CAM's successors, each a short variant of `ChannelWeightedMap` (base.py): any layer a
Grad-CAM reads (transformer tokens included), the same recording, ReLU and upsampling.

- Grad-CAM++ (Chattopadhay, Sarkar, Howlader, Balasubramanian, WACV 2018, eqs. 10 and 19):
  w_k = sum_ij alpha_kij ReLU(g_kij) with alpha_kij = g^2 / (2 g^2 + sum_ab A_kab g^3), the
  closed form for an exponential of the score, with g the gradient of the score itself, as the
  authors' code and pytorch-grad-cam do; alpha is 0 where g is.
- LayerCAM (Jiang, Zhang, Hou, Cheng, Wei, IEEE TIP 2021, eq. 5): every location weighted by
  its own positive gradient, map = ReLU(sum_k ReLU(g_kij) A_kij); meant for early layers too.
- Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu, CVPRW 2020, eqs. 4-6): no
  gradient; each channel, upsampled and min-max scaled to [0, 1], masks the input, and the
  channel's weight is the softmax over channels of the target logit of its masked input, as
  in the authors' and pytorch-grad-cam's code (the paper's eq. 4 subtracts a baseline score,
  which the softmax over channels does not change). The B x K masked forwards run in batches.
  Masks are upsampled as the authors' code does (bilinear, align_corners=False);
  pytorch-grad-cam aligns corners (`ScoreCAM(..., align_corners=True)` reproduces it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.core.model_state import forward_batch
from xai_utils.core.registry import Explanation, register
from xai_utils.methods.cam.base import ChannelWeightedMap, _explanation


class GradCAMPlusPlus(ChannelWeightedMap):
    """Grad-CAM++: the positive gradients weighted by alpha (see the module docstring)."""

    def channel_weights(self, acts, grads, targets):
        g2, g3 = grads.pow(2), grads.pow(3)
        total = acts.sum(dim=(-2, -1))[:, None, :, None, None]  # B x 1 x K x 1 x 1
        alpha = g2 / (2 * g2 + total * g3).where(grads != 0, torch.ones_like(g2))
        alpha = alpha.where(grads != 0, torch.zeros_like(alpha))
        return (alpha * grads.clamp_min(0)).sum(dim=(-2, -1))


class LayerCAM(ChannelWeightedMap):
    """LayerCAM: each location of each channel weighted by its own positive gradient."""

    def combine(self, x, acts, grads, targets):
        return (grads.clamp_min(0) * acts[:, None]).sum(dim=2), None


class ScoreCAM(ChannelWeightedMap):
    """Score-CAM: channel weights from the scores of the inputs each channel masks."""

    uses_gradients = False

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool | None = None,
                 counterfactual: bool = False, batch_size: int | None = None,
                 align_corners: bool = False) -> None:
        super().__init__(model, layer, relu, counterfactual)
        self.batch_size, self.align_corners = batch_size, align_corners

    @torch.no_grad()
    def channel_weights_for(self, x: torch.Tensor, acts: torch.Tensor,
                            targets: torch.Tensor) -> torch.Tensor:
        b, k = acts.shape[:2]
        up = F.interpolate(acts, size=tuple(x.shape[-2:]), mode="bilinear",
                           align_corners=self.align_corners)  # B x K x H x W
        lo, hi = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
        masks = ((up - lo) / (hi - lo)).where(hi > lo, torch.zeros_like(up))
        size = self.batch_size or forward_batch(*x.shape[-2:], x.device)
        scores = torch.empty(b, targets.shape[1], k, device=x.device, dtype=x.dtype)
        flat = torch.arange(b * k, device=x.device)
        for start in range(0, b * k, size):
            idx = flat[start:start + size]
            img, ch = idx // k, idx % k
            logits = self.model(x[img] * masks[img, ch][:, None])
            scores[img, :, ch] = logits.gather(1, targets[img]).to(x.dtype)
        return scores.softmax(dim=-1)

    def combine(self, x, acts, grads, targets):
        weights = self.channel_weights_for(x, acts, targets)
        return torch.einsum("btk,bkhw->bthw", weights, acts), weights


@register("gradcampp")
def gradcampp(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
              layer: str | None = None) -> Explanation:
    """Grad-CAM++ on `layer` (default: Grad-CAM's); extras carry the low-res map."""
    return _explanation(GradCAMPlusPlus(model, layer)(x, target))


@register("layercam")
def layercam(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
             layer: str | None = None) -> Explanation:
    """LayerCAM on `layer` (default: Grad-CAM's; early layers give finer maps)."""
    return _explanation(LayerCAM(model, layer)(x, target))


@register("scorecam", requires=())
def scorecam(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
             layer: str | None = None, batch_size: int | None = None) -> Explanation:
    """Score-CAM on `layer` (default: Grad-CAM's): one forward per channel and image, in
    batches of `batch_size` (default: `forward_batch`)."""
    return _explanation(ScoreCAM(model, layer, batch_size=batch_size)(x, target))
