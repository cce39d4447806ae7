"""Sliding-window occlusion (Zeiler & Fergus 2014, "Visualizing and Understanding
Convolutional Networks", ECCV, sec. 4.2 / Fig. 7), registered as `occlusion`.

A `window` x `window` patch set to `baseline` slides over the image with `stride`; each
pixel's saliency is the mean, over the windows that cover it, of the score drop
    s(x) - s(x with the window replaced by the baseline).
Window positions follow Captum's `Occlusion`: ceil((H - h) / stride) + 1 starts per axis
at multiples of the stride; windows running past the edge are cut there. Every window of
every image is evaluated on the device in batches of `batch_size`, channels-last and with
BatchNorms merged into their layers (same outputs, faster on a CPU). Where the model can be
traced (VGG, ResNet, EfficientNet), the layers before global pooling recompute only each
window's receptive field (`xai_utils.methods.occlusion.incremental`, exact); other models
get full passes.

Departures: Zeiler & Fergus drew the probability of the correct class as a map over
window positions (grey patch); here `output="prob"` (default) or `"logit"` scores, the
baseline is any value in the model's input space (0 = the dataset mean after
normalisation, `"mean"` = each image's own channel means), and the map is spread back to
pixels by averaging, as Captum does.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from xai_utils.core.model_state import channels_last, forward_batch, merged_batchnorm
from xai_utils.core.registry import Explanation, register
from xai_utils.methods.occlusion.incremental import plan


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def window_masks(height: int, width: int, window, stride, device=None) -> torch.Tensor:
    """K x H x W bool masks of every window position (row-major over positions)."""
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    if not (0 < wh <= height and 0 < ww <= width) or sh <= 0 or sw <= 0:
        raise ValueError(f"window {window} / stride {stride} do not fit a {height}x{width} input")
    ys = torch.arange(math.ceil((height - wh) / sh) + 1, device=device) * sh
    xs = torch.arange(math.ceil((width - ww) / sw) + 1, device=device) * sw
    yy = torch.arange(height, device=device)
    xx = torch.arange(width, device=device)
    rows = (yy[None] >= ys[:, None]) & (yy[None] < ys[:, None] + wh)      # Ny x H
    cols = (xx[None] >= xs[:, None]) & (xx[None] < xs[:, None] + ww)      # Nx x W
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(-1, height, width)


def _evaluation_settings(side: int, device) -> dict:
    """A window of 1/7 of the input side, half of it as stride (16 / 8 px at 112 px, 32 / 16
    px at 224 px), the device's forward batch."""
    window = max(2, side // 7)
    return {"window": window, "stride": window // 2,
            "batch_size": forward_batch(side, side, device)}


# Full forward passes when a window would still cost more than this share of one
# (`Plan.prepare`'s estimate): where patches end early (ConvNeXt's and Swin's LayerNorms,
# DenseNet's concatenations: 0.96-1.0 at 224 px) the gathers and pastes cost more than they
# save; ResNet50 0.54, EfficientNet-Lite0 0.66, shapes_vgg 0.09 (window 32, stride 16).
MAX_INCREMENTAL_COST = 0.9
# LayerNorms and attention end every patch where they first occur (the geometry pass
# estimated 0.99-1.0 of a full pass on ConvNeXt, Swin and ViT), so models with them skip the
# trace and the geometry pass, which cost 3-5 % of a full-pass run there
PATCH_ENDS = (nn.LayerNorm, nn.MultiheadAttention)


@register("occlusion", requires=(), evaluation=_evaluation_settings,
          probe=lambda side: {"window": side, "stride": side})
@torch.no_grad()
def occlusion(model, x: torch.Tensor, target: torch.Tensor, window=16, stride=8,
              baseline=0.0, output: str = "prob", batch_size: int | None = None,
              incremental: bool = True, progress: bool = False) -> Explanation:
    """Zeiler & Fergus occlusion map (B x H x W); extras: per-window drops (B x Ny x Nx),
    the unoccluded score, and whether incremental inference was used.

    `batch_size`: images per forward pass (default: `core.model_state.forward_batch`).
    `incremental`: recompute only the windows' receptive fields until global pooling where
    the model can be traced (`incremental.py`; exact up to float rounding) and where that
    saves enough (`MAX_INCREMENTAL_COST`; extras["incremental_cost"]: the estimate)."""
    if output not in ("prob", "logit"):
        raise ValueError(f"output must be 'prob' or 'logit', got {output!r}")
    b, c, h, w = x.shape
    (wh, ww), (sh, sw) = _pair(window), _pair(stride)
    batch_size = batch_size or forward_batch(h, w, x.device)
    masks = window_masks(h, w, window, stride, x.device)
    ny, nx = math.ceil((h - wh) / sh) + 1, math.ceil((w - ww) / sw) + 1
    k = masks.shape[0]
    if isinstance(baseline, str):
        if baseline != "mean":
            raise ValueError(f"baseline must be a number, a tensor or 'mean', got {baseline!r}")
        base = x.mean((2, 3), keepdim=True).expand_as(x)
    else:
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        base = base.reshape(-1, 1, 1) if base.dim() == 1 else base
        base = base.expand_as(x)

    def score(out: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        out = out.softmax(1) if output == "prob" else out
        return out.gather(1, cls[:, None])[:, 0]

    drops = torch.empty(b * k, dtype=x.dtype, device=x.device)
    pairs = range(0, b * k, batch_size)
    with merged_batchnorm(model):
        x = channels_last(x)
        full = score(model(x), target)
        inc = (incremental and not any(isinstance(m, PATCH_ENDS) for m in model.modules())
               and plan(model, x, base, (wh, ww)))
        cost = 1.0
        if inc:
            windows = torch.arange(k, device=x.device)
            cost = inc.prepare(windows // nx * sh, windows % nx * sw)
            if cost > MAX_INCREMENTAL_COST:
                inc = None
        for s in tqdm(pairs, desc="occlusion windows", disable=not progress):
            idx = torch.arange(s, min(s + batch_size, b * k), device=x.device)
            img, win = idx // k, idx % k
            if inc:
                out = inc.logits(img, win // nx * sh, win % nx * sw)
            else:
                out = model(channels_last(torch.where(masks[win][:, None], base[img], x[img])))
            drops[idx] = full[img] - score(out, target[img])
    drops = drops.view(b, k)
    flat = masks.flatten(1).to(x.dtype)
    sal = (drops @ flat) / flat.sum(0).clamp_min(1)
    return Explanation(sal.view(b, h, w), target,
                       extras={"drops": drops.view(b, ny, nx), "score": full,
                               "incremental": bool(inc), "incremental_cost": cost})
