"""Small tensor operations shared by methods, tools and metrics (batched, on the input's
device): Gaussian blur, bounding boxes, min-max scaling, target probability, total variation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float = 10.0, radius: int | None = None) -> torch.Tensor:
    """A Gaussian-blurred copy of a B x C x H x W batch (separable, reflect padding).

    `radius`: half the window (None: 3 sigma, as far as the image allows; OpenCV's
    `GaussianBlur(size)` is `radius=size // 2`).
    """
    if radius is None:
        radius = max(1, int(3 * sigma))
        radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    y = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k, groups=x.shape[1])
    return F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.transpose(2, 3),
                    groups=x.shape[1])


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """n x 4 (top, left, bottom, right; inclusive) bounding boxes of n x H x W masks; an
    empty mask gives (H, W, -1, -1)."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2), masks.any(1)
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    top = torch.where(rows, ar_h, h).amin(1)
    bottom = torch.where(rows, ar_h, -1).amax(1)
    left = torch.where(cols, ar_w, w).amin(1)
    right = torch.where(cols, ar_w, -1).amax(1)
    return torch.stack([top, left, bottom, right], 1)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each map of a B x ... batch scaled to [0, 1] (constant maps become 0)."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(maps)


def target_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """B softmax probabilities of each row's target class."""
    return logits.softmax(1).gather(1, target[:, None])[:, 0]


def total_variation(mask: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Anisotropic TV per map: mean |d_row|^beta + mean |d_col|^beta (B x [C x] H x W -> B)."""
    rows = (mask[..., 1:, :] - mask[..., :-1, :]).abs().pow(beta).flatten(1).mean(1)
    cols = (mask[..., :, 1:] - mask[..., :, :-1]).abs().pow(beta).flatten(1).mean(1)
    return rows + cols
