"""The same explanations computed by the reference libraries, for agreement and speed checks.

Each function takes our model, a batch and its targets, runs the reference implementation
(pytorch-grad-cam, Captum or Zennit, installed with the `test` extra; TorchRay's extremal
perturbation, installed by `make setup` without its dependencies) with the settings that
our own call uses, and returns B x H x W maps at input resolution. `compare` times ours and
theirs in one interleaved run and reports the Pearson correlation of the maps.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.core.hooks import get_layer
from xai_utils.evaluation.profiling import timed
from xai_utils.methods.cam import default_layer


def gradcam_pytorch_grad_cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                             layer: str | None = None) -> torch.Tensor:
    """pytorch-grad-cam's `GradCAM` (its maps come back min-max normalised, resized by cv2)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = get_layer(model, layer or default_layer(model))
    cam = GradCAM(model=model, target_layers=[module])
    try:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(maps).to(x.device)


def gradcam_captum(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   layer: str | None = None) -> torch.Tensor:
    """Captum's `LayerGradCam` with ReLU, bilinearly interpolated to the input."""
    from captum.attr import LayerAttribution, LayerGradCam

    module = get_layer(model, layer or default_layer(model))
    low = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(low, tuple(x.shape[-2:]), "bilinear")[:, 0].detach()


@torch.no_grad()
def occlusion_captum(model: nn.Module, x: torch.Tensor, target: torch.Tensor, window: int,
                     stride: int, baseline: float = 0.0, batch_size: int = 256) -> torch.Tensor:
    """Captum's `Occlusion` on the logits, summed over channels (our map uses the logit drop
    averaged over the windows covering a pixel; Captum averages the same way).

    `batch_size`: images per forward pass, as for ours; Captum applies each perturbation to
    the whole batch, so it gets batch_size // len(x) perturbations per evaluation."""
    from captum.attr import Occlusion

    per_eval = max(1, batch_size // len(x))
    attr = Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], window, window),
                                      strides=(x.shape[1], stride, stride), baselines=baseline,
                                      target=target, perturbations_per_eval=per_eval)
    return attr.mean(1)


def lrp_captum(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Captum's `LRP` with its default epsilon rule on every layer, summed over channels."""
    from captum.attr import LRP

    return LRP(model).attribute(x.detach().clone(), target=target).sum(1).detach()


def lrp_zennit(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
               composite: str = "epsilon_alpha2beta1") -> torch.Tensor:
    """Zennit with the composite named as ours (`epsilon_alpha2beta1` or `epsilon_plus_flat`),
    output relevance = the target logit, summed over channels."""
    from zennit import composites as zc

    makers = {"epsilon_alpha2beta1": zc.EpsilonAlpha2Beta1, "epsilon_plus_flat": zc.EpsilonPlusFlat}
    if composite not in makers:
        raise ValueError(f"no Zennit counterpart for {composite!r}: use one of {sorted(makers)}")
    xg = x.detach().clone().requires_grad_(True)
    with makers[composite]().context(model) as modified:
        out = modified(xg)
        seed = torch.zeros_like(out).scatter_(1, target[:, None], 1.0) * out.detach()
        (relevance,) = torch.autograd.grad(out, xg, grad_outputs=seed)
    return relevance.sum(1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of the Pearson correlation of two batches of maps (same size)."""
    if a.shape[-2:] != b.shape[-2:]:
        b = F.interpolate(b[:, None].float(), size=a.shape[-2:], mode="bilinear")[:, 0]
    a, b = a.flatten(1).double(), b.flatten(1).double().to(a.device)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return float(r.mean())


def extremal_torchray(model: nn.Module, x: torch.Tensor, target: torch.Tensor, areas,
                      steps: int = 800, **params) -> torch.Tensor:
    """TorchRay's `extremal_perturbation` (preservation game), one image at a time as it
    requires: B x A x H x W masks. Extra keyword arguments go to TorchRay (step, sigma, ...).
    The model's `requires_grad` flags, which TorchRay turns off, are restored."""
    from torchray.attribution.extremal_perturbation import extremal_perturbation

    flags = [q.requires_grad for q in model.parameters()]
    try:
        masks = [extremal_perturbation(model, x[i:i + 1], int(target[i]), areas=list(areas),
                                       max_iter=steps, **params)[0][:, 0]
                 for i in range(len(x))]
    finally:
        for q, flag in zip(model.parameters(), flags, strict=True):
            q.requires_grad_(flag)
    return torch.stack(masks).detach()


def top_fraction(maps: torch.Tensor, area: float) -> torch.Tensor:
    """B x H x W bools: the `area` fraction of each map's highest pixels (at least one)."""
    k = max(1, int(area * maps[0].numel()))
    keep = torch.zeros_like(maps.flatten(1), dtype=torch.bool)
    keep.scatter_(1, maps.flatten(1).topk(k, dim=1).indices, True)
    return keep.view_as(maps)


def top_overlap(a: torch.Tensor, b: torch.Tensor, area: float) -> torch.Tensor:
    """Intersection over union of the `area` fraction of highest pixels of maps a and b
    (B x H x W each): how far two masks keep the same region."""
    keep_a, keep_b = top_fraction(a, area).flatten(1), top_fraction(b, area).flatten(1)
    return (keep_a & keep_b).sum(1) / (keep_a | keep_b).sum(1)


def compare(ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor],
            repeats: int = 3) -> dict[str, float]:
    """Pearson r of the two maps and their median times, measured interleaved in one run."""
    a, b = ours(), theirs()  # also the warm-up
    t_ours, t_theirs = timed([ours, theirs], a.device, repeats=repeats, warmup=0,
                             reduce=statistics.median)
    return {"pearson": pearson(a, b), "ours_s": t_ours, "theirs_s": t_theirs,
            "speedup": t_theirs / t_ours}
