"""A reference optimiser for the pre-image objective: plain `torch.optim.Adam`, no jitter.

Mahendran & Vedaldi (IJCV 2016, arXiv:1512.02017, sec. 3) optimise E(x) with jitter: the
representation term sees a randomly rolled copy of x, the price they pay for natural-looking
pre-images. The reported error is measured on the unrolled image, so jitter alone keeps it
above what the objective without jitter allows. `adam_reference` minimises that objective
without jitter, by autograd and `torch.optim.Adam`, independently of `preimage.run`'s
optimiser: an engine run with `jitter=0` should reach about the same error, and the gap
between a jittered run and this reference is the price of jitter, not of the optimiser.

Same as `preimage.run`: the starting noise of each seed, the objective (C * normalised
representation error + R_alpha + R_TV, prior centred on `centre`), the pixel-norm clamp
after each step, and (lr, lr / 10) for `steps`. The objective is multiplied by H * W so
Adam's epsilon is negligible; a constant factor does not move the minimum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xai_utils.inversion.preimage import (
    Result,
    _per_sample,
    alpha_norm,
    clamp_pixels,
    layer_outputs,
    tv_prior,
)
from xai_utils.inversion.synthesis import natural_bound, natural_centre


def adam_reference(model: nn.Module, targets: Sequence[torch.Tensor], layers: Sequence[str],
                   size: tuple[int, int], bound: float, *, seeds: Sequence[int],
                   steps: tuple[int, int] = (300, 50), lr: float = 0.05, C=1.0,
                   alpha: float = 6.0, alpha_weight: float = 1.0, beta: float = 2.0,
                   tv_scale=6.5, clamp: float = 2.0,
                   centre: torch.Tensor | None = None) -> Result:
    """Element i inverts targets[i] at layers[i] from seed seeds[i]'s noise with
    `torch.optim.Adam` (lr in units of B) on the un-jittered objective; arguments as in
    `preimage.run`. `loss` holds the normalised error of each iteration."""
    n = len(targets)
    if not (len(layers) == len(seeds) == n):
        raise ValueError(f"need one layer and one seed per target ({n})")
    dev, dt = targets[0].device, targets[0].dtype
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    u = torch.stack([torch.randn(3, *size, generator=g, dtype=dt) for g in gens]).to(dev)
    u = (u / 3 ** 0.5).requires_grad_(True)
    centre = u.new_zeros(1, 1, 1, 1) if centre is None else centre.to(u)
    c_w = _per_sample(C, n, u.detach())
    tv_s = _per_sample(tv_scale, n, u.detach())
    tnorm = torch.stack([t.pow(2).sum() for t in targets]).clamp_min(1e-30)
    names = list(dict.fromkeys(layers))

    def error(x: torch.Tensor) -> torch.Tensor:
        feats = layer_outputs(model, x, names)
        return torch.stack([(feats[layers[i]][i] - targets[i]).pow(2).sum()
                            for i in range(n)]) / tnorm

    opt = torch.optim.Adam([u], lr=lr)
    hist_l, hist_o = [], []
    for it in range(steps[0] + steps[1]):
        if it == steps[0]:
            opt.param_groups[0]["lr"] = lr * 0.1
        xd = u * bound
        rep = error(centre + xd)
        tv = torch.where(tv_s > 0, tv_prior(xd, 1.0, beta) * tv_s ** beta / bound ** beta, 0.0)
        obj = c_w * rep + alpha_weight * alpha_norm(xd, bound, alpha) + tv
        opt.zero_grad()
        (obj.sum() * size[0] * size[1]).backward()
        opt.step()
        with torch.no_grad():
            if clamp:
                clamp_pixels(u, clamp)
        hist_l.append(rep.detach())
        hist_o.append(obj.detach())
    with torch.no_grad():
        images = centre + u.detach() * bound
        final = error(images)
    return Result(images, final, torch.stack(hist_l), torch.stack(hist_o))


def reference_target(model: nn.Module, target: Sequence[torch.Tensor],
                     layer: str | Sequence[str], size: int | tuple[int, int], *,
                     restarts: int = 1, seed: int = 0, bound: float | None = None,
                     **kw) -> Result:
    """`adam_reference` with `synthesis.invert_target`'s conventions: the same batch order,
    seeds, natural B and centre, so element i starts from the same noise as there."""
    n = len(target)
    layers = [layer] * n if isinstance(layer, str) else list(layer)
    size = (size, size) if isinstance(size, int) else tuple(size)
    kw.setdefault("centre", natural_centre(model))
    return adam_reference(model, [t for t in target for _ in range(restarts)],
                          [name for name in layers for _ in range(restarts)], size,
                          natural_bound(model) if bound is None else bound,
                          seeds=[seed + r for _ in range(n) for r in range(restarts)], **kw)
