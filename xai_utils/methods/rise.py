"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018, eqs. 5-6 and Sec. 3.2): the input is masked by `masks` random smooth
masks, and the map is the masks averaged with the class probability of each masked input as
weight, divided by the expected mask value `p`:

    S(x) = 1 / (N p) * sum_i f_c(x * M_i) M_i .

Each mask is a `cells` x `cells` grid of cells kept with probability `p`, upsampled bilinearly
to (cells + 1) times the cell size and cropped at a random shift of up to one cell (the
paper's construction; TorchRay pads by reflection before upsampling, which we follow so that
the same seed draws masks as smooth at the border as inside). Masks are drawn on the device in
batches with a seeded generator; `masks` may also be a given N x H x W tensor. `output`:
"prob" (softmax, the paper), "sigmoid" (TorchRay's choice) or "logit". Every image meets every
mask in batches of `batch_size` masked inputs (default: `forward_batch`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xai_utils.core.model_state import forward_batch
from xai_utils.core.registry import Explanation, register

OUTPUTS = ("prob", "sigmoid", "logit")


def rise_masks(count: int, size: tuple[int, int], cells: int = 7, p: float = 0.5,
               seed: int = 0, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """`count` RISE masks (count x H x W, values in [0, 1]) of `cells` x `cells` grids."""
    h, w = size
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    gen = torch.Generator(device=device).manual_seed(seed)
    grid = (torch.rand(count, 1, cells, cells, generator=gen, device=device) < p).to(dtype)
    padded = F.pad(grid, (1, 1, 1, 1), mode="reflect") if cells > 1 else grid.expand(
        -1, -1, 3, 3)
    up = F.interpolate(padded, size=(ch * (cells + 2), cw * (cells + 2)), mode="bilinear",
                       align_corners=False)[:, 0, ch:ch + h + ch, cw:cw + w + cw]
    dy = torch.randint(0, ch, (count,), generator=gen, device=device)
    dx = torch.randint(0, cw, (count,), generator=gen, device=device)
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = dx[:, None] + torch.arange(w, device=device)
    return up[torch.arange(count, device=device)[:, None, None], rows[:, :, None],
              cols[:, None, :]]


@register("rise", requires=(), stochastic=True, evaluation=lambda side, device: {"masks": 1000},
          probe=lambda side: {"masks": 2})
@torch.no_grad()
def rise(model, x: torch.Tensor, target: torch.Tensor, masks: int | torch.Tensor = 4000,
         cells: int = 7, p: float = 0.5, output: str = "prob", seed: int = 0,
         batch_size: int | None = None) -> Explanation:
    """RISE (see the module docstring); extras: the number of masks and `p`."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    b, _, h, w = x.shape
    if isinstance(masks, torch.Tensor):
        m = masks.to(x).reshape(-1, h, w)
    else:
        if masks < 1 or cells < 1:
            raise ValueError(f"masks and cells must be >= 1, got {masks}, {cells}")
        m = rise_masks(masks, (h, w), cells, p, seed, x.device, x.dtype)
    n = m.shape[0]
    size = batch_size or forward_batch(h, w, x.device)
    scores = torch.empty(b, n, device=x.device, dtype=x.dtype)
    pairs = torch.arange(b * n, device=x.device)
    for start in range(0, b * n, size):
        idx = pairs[start:start + size]
        img, k = idx // n, idx % n
        out = model(x[img] * m[k][:, None])
        out = {"prob": out.softmax(1), "sigmoid": out.sigmoid(), "logit": out}[output]
        scores[img, k] = out.gather(1, target[img][:, None])[:, 0]
    saliency = (scores @ m.flatten(1)).view(b, h, w) / (n * p)
    return Explanation(saliency, target, extras={"masks": n, "p": p})
