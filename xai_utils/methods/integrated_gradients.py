"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks",
ICML 2017, eq. 1): the input's difference from a baseline times the gradient of the target
logit averaged along the straight path between them,

    IG_i(x) = (x_i - x'_i) * integral_0^1 d f(x' + a (x - x')) / d x_i  da,

approximated by a quadrature rule over `steps` points (the paper's Riemann sum; Captum's
default Gauss-Legendre and its other rules by the same names). Completeness: the attributions
sum to f(x) - f(x') up to the quadrature's error, which `extras["completeness_gap"]` reports.
Departures from Captum: the path points are kept in the input's precision (Captum's Riemann
points are float32, which moves them across a ReLU network's kinks in float64), and the
trapezoid rule's weights sum to one (Captum's sum to (n - 1) / n).

Baselines: "zero" (zeros in the model's normalised input space, Captum's default), "black"
(pixel value 0), "blur" (a Gaussian blur of the image, sigma `blur_sigma` px), or a tensor
broadcastable to the input. The map is the attribution summed over colour channels (signed);
the per-channel attribution is `extras["attribution"]`. All path points of all images run in
batches of `batch_size` (default: `forward_batch`).
"""

from __future__ import annotations

import numpy as np
import torch

from xai_utils.core.inputs import input_spec
from xai_utils.core.model_state import forward_batch
from xai_utils.core.ops import gaussian_blur
from xai_utils.core.registry import Explanation, register

RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
         "riemann_middle")


def quadrature(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points in [0, 1] and weights of the quadrature rule `method` with `steps` points."""
    if method not in RULES:
        raise ValueError(f"method must be one of {', '.join(RULES)}, got {method!r}")
    if steps < (2 if method == "riemann_trapezoid" else 1):
        raise ValueError(f"steps must be at least 1 (2 for the trapezoid rule), got {steps}")
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
        return torch.linspace(0, 1, n, dtype=torch.float64), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    points = (torch.arange(n, dtype=torch.float64) + offset) / n
    return points, torch.full((n,), 1 / n, dtype=torch.float64)


def baseline_for(model, x: torch.Tensor, baseline, blur_sigma: float = 10.0) -> torch.Tensor:
    """The baseline image in the model's input space (see the module docstring)."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "black":
        return input_spec(model, x.device, x.dtype).low.expand_as(x)
    if baseline == "blur":
        return gaussian_blur(x, sigma=blur_sigma)
    raise ValueError(f"baseline must be 'zero', 'black', 'blur' or a tensor, got {baseline!r}")


@register("integrated_gradients", probe=lambda side: {"steps": 1})
def integrated_gradients(model, x: torch.Tensor, target: torch.Tensor, steps: int = 50,
                         baseline: str | torch.Tensor = "zero",
                         method: str = "gausslegendre", blur_sigma: float = 10.0,
                         batch_size: int | None = None) -> Explanation:
    """Integrated Gradients of the target logits (see the module docstring); extras:
    attribution (B x C x H x W), baseline, completeness_gap (B: sum of the attribution minus
    f(x) - f(baseline))."""
    x = x.detach()
    base = baseline_for(model, x, baseline, blur_sigma)
    points, weights = (t.to(x) for t in quadrature(method, steps))
    b = x.shape[0]
    size = batch_size or forward_batch(*x.shape[-2:], x.device)
    total = torch.zeros_like(x)
    pairs = torch.arange(b * steps, device=x.device)  # (step, image) pairs, all batched
    for start in range(0, b * steps, size):
        idx = pairs[start:start + size]
        img, k = idx % b, idx // b
        alpha = points[k].view(-1, 1, 1, 1)
        path = (base[img] + alpha * (x[img] - base[img])).requires_grad_(True)
        score = model(path).gather(1, target[img][:, None]).squeeze(1)
        (grad,) = torch.autograd.grad((score * weights[k]).sum(), path)
        total.index_add_(0, img, grad)
    attribution = (x - base) * total
    with torch.no_grad():
        ends = model(torch.cat([x, base])).gather(1, target.repeat(2)[:, None]).squeeze(1)
    gap = attribution.sum(dim=(1, 2, 3)) - (ends[:b] - ends[b:])
    return Explanation(attribution.sum(1), target, extras={
        "attribution": attribution, "baseline": base, "completeness_gap": gap})
