"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017).

Both weight the K channels of one convolutional feature map A (B x K x h x w) and sum them:

    map_c = [ReLU]( sum_k  w_ck A_k ),  then bilinear upsampling to the input size.

- CAM (Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative
  Localization", CVPR 2016, eq. 2): w_ck are the rows of the final linear layer, and A is the
  final feature map, the one the global average pool reads (after the last activation or
  residual add). Then ``mean_ij CAM_c + b_c = logit_c`` exactly; `CAM` checks that identity
  on every call, which catches a wrong layer (e.g. a conv before its BatchNorm, residual add
  and ReLU). A head that is not global-average-pool + one linear layer is an error.
- Grad-CAM (Selvaraju et al., ICCV 2017, arXiv 1610.02391, eqs. 1-2): any layer;
  alpha_ck = mean_ij d y_c / d A_k(ij), map = ReLU(sum_k alpha_ck A_k). With a GAP + linear
  head, alpha_ck = w_ck / (h w), so Grad-CAM = ReLU(CAM) / (h w). Counterfactual maps
  (Sec. 3 of the paper) negate the weights: regions that speak *against* the class.

Departures, on purpose: the forward pass runs without autograd up to the explained layer,
whose output starts a fresh graph; gradients are taken with `torch.autograd.grad` with
respect to that activation only (no parameter gradients, no backward below the layer), so a
Grad-CAM costs about one inference pass plus a backward through the head;
several target classes share one forward pass; maps stay raw (the ReLU-ed weighted sum,
upsampled), not min-max normalised, so the identities above can be tested. CAM keeps the
sign (no ReLU) by default, as the paper; pass `relu=True` to clip it.

Which layer is read, and how tokens or channel-last outputs become maps: layers.py;
CAM's head check: head.py; the recording and gradients: grads.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xai_utils.core.hooks import get_layer
from xai_utils.core.registry import (
    Explanation,
    MethodNotApplicable,
    class_indices,
    register,
)
from xai_utils.methods.cam.cache import LayerCache
from xai_utils.methods.cam.grads import (
    activations_and_gradients,
    upsample,
    weighted_sum,
)
from xai_utils.methods.cam.head import gap_linear_head, global_pool_layer
from xai_utils.methods.cam.layers import (
    LayerSpec,
    cam_layer_spec,
    default_layer,
    default_layer_spec,
    infer_layout,
    last_conv_up_to,
    layer_spec,
    stage_layers,
    to_maps,
)

__all__ = ["CAM", "ChannelWeightedMap", "GradCAM", "LayerCache", "LayerSpec",
           "activations_and_gradients", "cam", "cam_layer_spec", "default_layer",
           "default_layer_spec", "gap_linear_head", "global_pool_layer", "gradcam",
           "last_conv_up_to", "stage_layers", "upsample", "weighted_sum"]


@dataclass
class CamResult:
    saliency: torch.Tensor  # B x T x H x W at input resolution
    lowres: torch.Tensor  # B x T x h x w at the layer's resolution
    weights: torch.Tensor | None  # B x T x K channel weights (negated when counterfactual)
    logits: torch.Tensor  # B x C
    targets: torch.Tensor  # B x T
    layer: str


class ChannelWeightedMap:
    """Shared work: record the layer, weight its channels, sum, optional ReLU, upsample.

    Variants override `channel_weights` (and may `verify` the raw maps).
    """

    uses_gradients = True
    relu = True
    cam_layer = False  # the default layer: the pool's input (CAM) or the last block

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool | None = None,
                 counterfactual: bool = False) -> None:
        self.model = model
        self.spec = layer_spec(model, layer, cam=self.cam_layer)
        self.layer = self.spec.name
        get_layer(model, self.layer)
        if relu is not None:
            self.relu = relu
        self.counterfactual = counterfactual

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None,
                        targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def verify(self, raw: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Hook for variants that can check their raw maps against the logits."""

    def combine(self, x: torch.Tensor, acts: torch.Tensor, grads: torch.Tensor | None,
                targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The raw maps (B x T x h x w) and channel weights (B x T x K, or None where each
        location has its own): by default the channels weighted by `channel_weights` and
        summed; variants that weight each location override this."""
        weights = self.channel_weights(acts, grads, targets)
        return weighted_sum(acts, weights), weights

    def maps(self, x: torch.Tensor, t: torch.Tensor | None, topk: int):
        """The layer's activations (B x K x h x w), gradients (B x T x K x h x w or None),
        logits and targets; a layer that does not read as a map is refused before any
        backward, and a token layer whose patch tokens get no gradient after it."""
        size = tuple(x.shape[-2:])

        def validate(name, act):
            infer_layout(name, tuple(act.shape[1:]), size, self.spec)

        acts, grads, logits, t = activations_and_gradients(
            self.model, x, [self.layer], t, topk, gradients=self.uses_gradients,
            validate=validate)
        act = to_maps(acts[self.layer], 1, self.layer, size, self.spec)
        grad = grads.get(self.layer)
        if grad is not None:
            maps = to_maps(grad, 2, self.layer, size, self.spec, activation=False)
            if not maps.any() and grad.any():
                raise MethodNotApplicable(
                    f"layer {self.layer!r}: only its prefix (class) tokens reach the head, so "
                    "the gradients at its patch tokens are zero; pass layer= an earlier one, "
                    f"e.g. the default {default_layer(self.model)!r}")
            grad = maps
        return act, grad, logits, t

    def __call__(self, x: torch.Tensor, targets=None, topk: int = 1) -> CamResult:
        """Maps for `targets` (None: the `topk` top classes; int; B; or B x T indices)."""
        t = None if targets is None else class_indices(targets, x.shape[0], x.device)
        act, grad, logits, t = self.maps(x, t, topk)
        raw, weights = self.combine(x, act, grad, t)
        self.verify(raw, logits, t)
        if self.counterfactual:
            raw = -raw
            weights = None if weights is None else -weights
        low = raw.clamp_min(0) if self.relu else raw
        return CamResult(upsample(low, x.shape[-2:]), low, weights, logits, t, self.layer)


class GradCAM(ChannelWeightedMap):
    """Grad-CAM: alpha_k = spatial mean of d y_c / d A_k; ReLU on by default."""

    def channel_weights(self, acts, grads, targets):
        return grads.mean(dim=(-2, -1))


class CAM(ChannelWeightedMap):
    """CAM: w_k = row c of the final linear layer; needs a GAP + linear head and the final
    feature map. `check` verifies mean_ij CAM_c + b_c = logit_c on every call."""

    uses_gradients = False
    relu = False
    cam_layer = True

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool | None = None,
                 counterfactual: bool = False, check: bool = True) -> None:
        self.fc = gap_linear_head(model)
        super().__init__(model, layer, relu, counterfactual)
        self.check = check

    def channel_weights(self, acts, grads, targets):
        if acts.shape[1] != self.fc.in_features:
            raise ValueError(f"layer {self.layer!r} has {acts.shape[1]} channels but the linear "
                             f"head reads {self.fc.in_features}: not the final feature map")
        return self.fc.weight.detach()[targets]

    def verify(self, raw, logits, targets):
        if not self.check:
            return
        bias = 0 if self.fc.bias is None else self.fc.bias.detach()[targets]
        err = (raw.mean(dim=(-2, -1)) + bias - logits.gather(1, targets)).abs().max()
        tol = torch.finfo(raw.dtype).eps ** 0.5 * logits.abs().max().clamp_min(1)
        if err > tol:
            raise ValueError(f"CAM on layer {self.layer!r} does not reproduce the logits (max "
                             f"error {float(err):.3g}): it is not the final feature map that "
                             f"the global average pool reads (default: "
                             f"{cam_layer_spec(self.model).name!r}). Pass check=False to see it "
                             "anyway, or use Grad-CAM for other layers.")


def _explanation(result: CamResult) -> Explanation:
    return Explanation(result.saliency[:, 0], result.targets[:, 0], extras={
        "lowres": result.lowres[:, 0],
        "weights": None if result.weights is None else result.weights[:, 0],
        "logits": result.logits, "layer": result.layer})


@register("gradcam")
def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None,
            relu: bool = True, counterfactual: bool = False) -> Explanation:
    """Grad-CAM on `layer` (default: the last feature map); extras carry the low-res map."""
    return _explanation(GradCAM(model, layer, relu, counterfactual)(x, target))


@register("cam", requires=("gap_linear_head",))
def cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None,
        relu: bool = False, counterfactual: bool = False, check: bool = True) -> Explanation:
    """CAM on the final feature map (GAP + linear heads only); raw signed map by default."""
    return _explanation(CAM(model, layer, relu, counterfactual, check)(x, target))
