"""Pre-images of a representation: the optimisation engine behind `xu.inversion`.

Mahendran & Vedaldi, "Understanding deep image representations by inverting them" (CVPR
2015, arXiv:1412.0035) and "Visualizing deep convolutional neural networks using natural
pre-images" (IJCV 2016, arXiv:1512.02017), as re-derived in "Deep Introspection" ch. 4.2.
The objective for each batch element is

    E(x) = C * ||Phi(jitter(x)) - Phi0||^2 / ||Phi0||^2 + R_alpha(x) + R_TV(x)
    R_alpha(x) = 1/(HW) sum_uv (||x_uv|| / B)^alpha                                 (alpha = 6)
    R_TV(x)    = 1/(HW) sum_uv (||x_{u,v+1} - x_uv||^2 + ||x_{u+1,v} - x_uv||^2)^(beta/2) / V^beta

with B the mean pixel-vector norm of natural images in the model's normalised input space,
V = B / 6.5 and beta = 2; forward differences past the last row / column are zero (seed
002 ch. 4.2.2). The regulariser gradients are closed forms (`alpha_norm_grad`, `tv_prior_grad`);
only the representation term goes through autograd. The optimiser is MV16's AdaGrad with
momentum, G <- m G + g^2, v <- m v - g / (1/lr + sqrt(G)), x <- x + v (m = 0.9), or Adam;
after each step every pixel vector is clamped to norm <= B+ = clamp * B (MV16: 2B).

Departures, stated: restarts (and several images, layers, C and TV weights) are one batch,
each element with its own target, weights and random generator, so a batched run equals
the sequential runs with the same seeds; the optimiser works on x / B and on H*W times the
gradient, so one learning rate serves every normalisation and resolution (the thesis's
rule lr = B^2 / (100 alpha) is applied with B = 80, MV16's value in 8-bit pixel units:
the AdaGrad variant runs on z = 80 x / B, so its step sizes match theirs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from xai_utils.core.hooks import get_layer

PIXEL = 80.0   # MV16's B in 8-bit pixel units: the AdaGrad variant runs on z = PIXEL * x / B
LR_THESIS = PIXEL ** 2 / (100 * 6.0)   # "Deep Introspection": lr = B^2 / (100 alpha) in those units


class _Stop(Exception):
    """Raised by a hook once every requested layer is captured: the rest is not computed."""


def layer_outputs(model: nn.Module, x: torch.Tensor, layers: Sequence[str]
                  ) -> dict[str, torch.Tensor]:
    """Outputs of `layers` for input `x` (graph kept), stopping the forward pass early.

    The pseudo-layers "logits" and "softmax" name the model output and its softmax.
    """
    wanted = [n for n in dict.fromkeys(layers) if n not in ("logits", "softmax")]
    out: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer {name!r} returns {type(output).__name__}, not a tensor")
            out[name] = output.clone()      # later in-place ops must not change it
            if len(out) == len(wanted) and len(wanted) == len(set(layers)):
                raise _Stop
        return hook

    try:
        for name in wanted:
            handles.append(get_layer(model, name).register_forward_hook(make_hook(name)))
        try:
            logits = model(x)
            out["logits"] = logits
            out["softmax"] = logits.softmax(dim=1)
        except _Stop:
            pass
    finally:
        for handle in handles:
            handle.remove()
    return out


@torch.no_grad()
def representation(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Phi(x): the output of `layer` (or "logits" / "softmax") for the batch `x`."""
    return layer_outputs(model, x, [layer])[layer].detach()


def alpha_norm(x: torch.Tensor, bound: float, alpha: float = 6.0) -> torch.Tensor:
    """R_alpha per batch element: 1/(HW) sum_uv (||x_uv|| / B)^alpha."""
    norm = x.pow(2).sum(1).sqrt()
    return (norm / bound).pow(alpha).mean((1, 2))


def alpha_norm_grad(x: torch.Tensor, bound: float, alpha: float = 6.0) -> torch.Tensor:
    """Closed-form dR_alpha/dx = alpha ||x_uv||^(alpha-2) x_uv / (HW B^alpha)."""
    hw = x.shape[-1] * x.shape[-2]
    sq = x.pow(2).sum(1, keepdim=True)
    return alpha * sq.pow(alpha / 2 - 1) * x / (hw * bound ** alpha)


def _diffs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along width and height, zero past the last column / row."""
    dw = torch.zeros_like(x)
    dh = torch.zeros_like(x)
    dw[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    dh[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return dw, dh


def tv_prior(x: torch.Tensor, v: float, beta: float = 2.0) -> torch.Tensor:
    """R_TV per batch element: 1/(HW) sum_uv (sum_k dw^2 + dh^2)^(beta/2) / V^beta."""
    dw, dh = _diffs(x)
    s = (dw.pow(2) + dh.pow(2)).sum(1)
    return s.pow(beta / 2).mean((1, 2)) / v ** beta


def tv_prior_grad(x: torch.Tensor, v: float, beta: float = 2.0) -> torch.Tensor:
    """Closed-form dR_TV/dx: each pixel enters its own two differences and its left and upper
    neighbours' ones ("Deep Introspection" ch. 4.2.2; beta != 2 weights by beta s^(beta/2 - 1))."""
    dw, dh = _diffs(x)
    hw = x.shape[-1] * x.shape[-2]
    s = (dw.pow(2) + dh.pow(2)).sum(1, keepdim=True)
    if beta == 2:
        w = torch.full_like(s, 2.0)
    else:                                   # s = 0 only where both differences are 0
        w = torch.where(s > 0, beta * s.clamp_min(1e-300).pow(beta / 2 - 1), 0.0)
    aw, ah = w * dw, w * dh
    g = -aw - ah
    g[..., :, 1:] += aw[..., :, :-1]
    g[..., 1:, :] += ah[..., :-1, :]
    return g / (hw * v ** beta)


def clamp_pixels(x: torch.Tensor, limit: float | torch.Tensor) -> torch.Tensor:
    """Scale every pixel vector whose norm exceeds `limit` back onto the sphere (in place)."""
    norm = x.pow(2).sum(1, keepdim=True).sqrt()
    return x.mul_((limit / norm.clamp_min(1e-12)).clamp(max=1.0))


def _per_sample(value, n: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"expected 1 or {n} values, got {t.numel()}")
    return t.clone()


@dataclass
class Result:
    """What `run` found: the pre-images and how the optimisation went."""

    images: torch.Tensor            # N x 3 x H x W, in the model's normalised input space
    error: torch.Tensor             # N final ||Phi(x) - Phi0||^2 / ||Phi0||^2 (no jitter)
    loss: torch.Tensor              # steps x N representation term per iteration (jittered)
    objective: torch.Tensor         # steps x N full objective per iteration
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)


def run(model: nn.Module, targets: torch.Tensor | Sequence[torch.Tensor], layers: Sequence[str],
        size: tuple[int, int], bound: float, *, seeds: Sequence[int],
        steps: tuple[int, int] = (300, 50), lr: float | None = None,
        optimizer: str = "adagrad", C=1.0, alpha: float = 6.0, alpha_weight: float = 1.0,
        beta: float = 2.0, tv_scale=6.5, clamp: float = 2.0, jitter: int | Sequence[int] = 0,
        momentum: float = 0.9, snapshots: Sequence[int] = (), progress: bool = True,
        centre: torch.Tensor | None = None) -> Result:
    """Minimise E(x) for N batch elements at once; element i inverts targets[i] (a tensor of
    targets or a list, shapes may differ between layers) at layers[i],
    starting from Gaussian noise of norm ~B drawn from torch.Generator(seed=seeds[i]).

    `C`, `tv_scale` (V = B / tv_scale; 0 switches TV off) and `jitter` (the largest random
    roll, in pixels, of the input the representation term sees; 0 = none) may be per element;
    `alpha_weight` = 0 switches R_alpha off and `clamp` = 0 the pixel-norm clamp (B+ = clamp B).
    `lr` None = the thesis's rule for AdaGrad (in MV16 pixel units), 0.05 (in units of B)
    for Adam.
    `steps` = (iterations at lr, iterations at lr / 10).
    `centre` (1 x C x 1 x 1, default 0): the mean natural image in the model's input units;
    images are centre + B u and the alpha-norm and clamp act on B u, the mean-subtracted
    image, as in MV15 (otherwise they pull a [0, 1]-input model's images towards black).
    """
    tlist = list(targets)
    n = len(tlist)
    lr = (LR_THESIS if optimizer == "adagrad" else 0.05) if lr is None else lr
    if not (len(layers) == len(seeds) == n):
        raise ValueError(f"need one layer and one seed per target ({n}), "
                         f"got {len(layers)} and {len(seeds)}")
    if optimizer not in ("adagrad", "adam"):
        raise ValueError(f"optimizer must be 'adagrad' or 'adam', got {optimizer!r}")
    dev, dt = tlist[0].device, tlist[0].dtype
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    u = torch.stack([torch.randn(3, *size, generator=g, dtype=dt) for g in gens]).to(dev)
    u /= 3 ** 0.5                                        # x = B u: pixel norms ~ B at start
    centre = u.new_zeros(1, 1, 1, 1) if centre is None else centre.to(u)
    c_w = _per_sample(C, n, u).view(n)
    tv_s = _per_sample(tv_scale, n, u).view(n, 1, 1, 1)
    jit = [int(j) for j in _per_sample(jitter, n, u.new_zeros(1, dtype=torch.float64))]
    groups = {name: [i for i in range(n) if layers[i] == name] for name in dict.fromkeys(layers)}
    stacked = {name: torch.stack([tlist[i] for i in idx]).flatten(1)
               for name, idx in groups.items()}
    tnorm = torch.stack([t.pow(2).sum() for t in tlist]).clamp_min(1e-30)
    state = torch.zeros_like(u), torch.zeros_like(u)
    hw = size[0] * size[1]
    total = steps[0] + steps[1]
    hist_l, hist_o, snaps = [], [], {}
    if 0 in snapshots:
        snaps[0] = (centre + u * bound).detach().clone()

    def rep_loss(x: torch.Tensor) -> torch.Tensor:
        feats = layer_outputs(model, x, list(groups))
        loss = x.new_zeros(n)
        for name, idx in groups.items():
            diff = feats[name][idx].flatten(1) - stacked[name]
            loss = loss.index_put((torch.tensor(idx, device=dev),), diff.pow(2).sum(1))
        return loss / tnorm

    for it in tqdm(range(total), desc="inversion", disable=not progress, leave=False):
        rate = lr if it < steps[0] else lr * 0.1
        shifts = [tuple(int(s) for s in torch.randint(-j, j + 1, (2,), generator=g)) if j
                  else (0, 0) for g, j in zip(gens, jit, strict=True)]
        x = (centre + u * bound).detach().requires_grad_(True)
        xj = torch.stack([torch.roll(x[i], s, (1, 2)) for i, s in enumerate(shifts)]) \
            if any(jit) else x
        loss = rep_loss(xj)
        (grad,) = torch.autograd.grad((c_w * loss).sum(), x)
        with torch.no_grad():
            xd = x.detach() - centre
            ra = alpha_weight * alpha_norm(xd, bound, alpha)
            rt = tv_prior(xd, 1.0, beta)
            rt = rt * tv_s.view(n) ** beta / bound ** beta
            grad = grad + alpha_weight * alpha_norm_grad(xd, bound, alpha)
            grad = grad + tv_prior_grad(xd, 1.0, beta) * tv_s ** beta / bound ** beta
            g = grad * bound * hw                          # gradient w.r.t. u, per pixel
            if optimizer == "adagrad":
                big_g, vel = state                         # in MV16's pixel units z = 80 u
                gz = g / PIXEL
                big_g.mul_(momentum).add_(gz * gz)
                vel.mul_(momentum).sub_(gz / (1.0 / rate + big_g.sqrt()))
                u.add_(vel / PIXEL)
            else:
                m1, m2 = state
                m1.mul_(0.9).add_(g, alpha=0.1)
                m2.mul_(0.999).add_(g * g, alpha=0.001)
                step = (m1 / (1 - 0.9 ** (it + 1))) / ((m2 / (1 - 0.999 ** (it + 1))).sqrt() + 1e-8)
                u.sub_(rate * step)
            if clamp:
                clamp_pixels(u, clamp)
            hist_l.append(loss.detach())
            hist_o.append((c_w * loss + ra + rt).detach())
            if it + 1 in snapshots:
                snaps[it + 1] = (centre + u * bound).clone()
    with torch.no_grad():
        images = centre + u * bound
        error = rep_loss(images)
    return Result(images, error, torch.stack(hist_l), torch.stack(hist_o), snaps)
