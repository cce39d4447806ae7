"""`LayerCache`: several layers' activations and per-class gradients from one forward pass,
so a slider redraws any (layer, class) Grad-CAM or CAM with a weighted sum."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xai_utils.core.registry import class_indices
from xai_utils.methods.cam.grads import (
    activations_and_gradients,
    upsample,
    weighted_sum,
)
from xai_utils.methods.cam.head import gap_linear_head
from xai_utils.methods.cam.layers import cam_layer_spec, layer_spec, stage_layers, to_maps


@dataclass
class LayerCache:
    """Activations and per-class gradients of several layers from ONE forward pass, so a
    slider can redraw any (layer, class) map with a weighted sum and an upsampling.

    >>> cache = LayerCache.build(model, x, stage_layers(model), topk=5)
    >>> cache.gradcam("bn2", 0)        # B x H x W, the top class;  cache.cam(1): CAM, 2nd class
    """

    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]  # B x T x K x h x w
    logits: torch.Tensor
    targets: torch.Tensor  # B x T
    size: tuple[int, int]
    head: tuple[torch.Tensor, torch.Tensor | None] | None  # (W, b) when CAM applies
    cam_layer: str

    @classmethod
    def build(cls, model: nn.Module, x: torch.Tensor, layers: list[str] | None = None,
              targets=None, topk: int = 5) -> LayerCache:
        layers = list(layers or stage_layers(model))
        t = None if targets is None else class_indices(targets, x.shape[0], x.device)
        acts, grads, logits, t = activations_and_gradients(model, x, layers, t, topk)
        size = tuple(x.shape[-2:])
        specs = {n: layer_spec(model, n) for n in layers}
        acts = {n: to_maps(a, 1, n, size, specs[n]) for n, a in acts.items()}
        grads = {n: to_maps(g, 2, n, size, specs[n], activation=False) for n, g in grads.items()}
        try:
            fc = gap_linear_head(model)
            bias = None if fc.bias is None else fc.bias.detach()
            head = (fc.weight.detach(), bias)
        except ValueError:
            head = None
        return cls(acts, grads, logits, t, size, head, cam_layer_spec(model).name)

    def gradcam(self, layer: str, index: int = 0, relu: bool = True,
                counterfactual: bool = False) -> torch.Tensor:
        """Grad-CAM of target column `index` on `layer`, B x H x W."""
        weights = self.gradients[layer][:, index].mean(dim=(-2, -1))
        raw = weighted_sum(self.activations[layer], weights[:, None])
        raw = -raw if counterfactual else raw
        return upsample(raw.clamp_min(0) if relu else raw, self.size)[:, 0]

    def cam(self, index: int = 0, relu: bool = False, counterfactual: bool = False
            ) -> torch.Tensor:
        """CAM of target column `index` on the final feature map, B x H x W."""
        if self.head is None or self.cam_layer not in self.activations:
            raise ValueError(f"CAM needs a GAP + linear head and the layer {self.cam_layer!r} "
                             "in the cache")
        raw = weighted_sum(self.activations[self.cam_layer],
                           self.head[0][self.targets[:, index]][:, None])
        raw = -raw if counterfactual else raw
        return upsample(raw.clamp_min(0) if relu else raw, self.size)[:, 0]
