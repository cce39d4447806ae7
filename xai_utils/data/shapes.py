"""The synthetic shapes benchmark of "Deep Introspection" (Dowling 2018, ch. 6); the small
VGG-style net that classifies it is `xai_utils.models.shapes_vgg`.

Each image is grey uniform noise with one white quadrilateral or ellipse at a random
position, size and rotation; the shape's own pixels are returned as a ground-truth mask.
Images are rasterised in closed form for a whole batch at once (no Python loop per image),
112 x 112 like the thesis, replicated to three channels in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IMAGE_SIZE = 112
CLASSES = ("quadrilateral", "ellipse")
TEST_SEED = 2024  # test images come from a seed the training stream never uses


@dataclass
class ShapesBatch:
    images: torch.Tensor  # N x 3 x H x W in [0, 1]
    labels: torch.Tensor  # N, 0 = quadrilateral, 1 = ellipse
    masks: torch.Tensor  # N x H x W bool, the shape's pixels


def _uniform(gen, n, lo, hi):
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def rotated_frame(cx: torch.Tensor, cy: torch.Tensor, theta: torch.Tensor, size: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """N x size x size coordinates (u, v) of every pixel centre in each shape's own frame,
    centred at (cx, cy) and rotated by theta."""
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    dx, dy = xx[None] - cx[:, None, None], yy[None] - cy[:, None, None]
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    return cos * dx + sin * dy, -sin * dx + cos * dy


def white_on_noise(masks: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W images: white where `masks` (N x H x W), grey `noise` (N x 1 x H x W)
    elsewhere."""
    n, h, w = masks.shape
    return torch.where(masks[:, None], torch.ones(()), noise).expand(n, 3, h, w).contiguous()


def generate(n: int, seed: int = 0, size: int = IMAGE_SIZE, device=None) -> ShapesBatch:
    """`n` shapes images, deterministic for a given seed (generated on the CPU)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, generator=gen) < 0.5).long()
    radius = _uniform(gen, n, 0.13, 0.30) * size
    margin = 1.3 * radius + 1
    cx = margin + torch.rand(n, generator=gen) * (size - 2 * margin)
    cy = margin + torch.rand(n, generator=gen) * (size - 2 * margin)
    theta = _uniform(gen, n, 0, math.pi)
    aspect = _uniform(gen, n, 0.45, 0.9)
    corner_angle = (torch.arange(4) * math.pi / 2 + math.pi / 4)[None] + \
        _uniform(gen, 4 * n, -0.45, 0.45).view(n, 4)
    corner_radius = _uniform(gen, 4 * n, 0.97, 1.3).view(n, 4)
    noise = torch.rand(n, 1, size, size, generator=gen)

    u, v = rotated_frame(cx, cy, theta, size)
    a = radius[:, None, None]
    b = (radius * aspect)[:, None, None]
    ellipse = (u / a) ** 2 + (v / b) ** 2 <= 1

    # quadrilateral: four corners around the centre; a point is inside when it lies in one
    # of the four triangles (centre, corner_i, corner_i+1)
    px = corner_radius * radius[:, None] * corner_angle.cos()
    py = corner_radius * radius[:, None] * corner_angle.sin() * (0.5 + aspect[:, None] / 1.8)
    quad = torch.zeros_like(ellipse)
    for i in range(4):
        x1, y1 = px[:, i, None, None], py[:, i, None, None]
        x2, y2 = px[:, (i + 1) % 4, None, None], py[:, (i + 1) % 4, None, None]
        c1 = x1 * v - y1 * u  # centre->corner_i edge (sign of the cross product)
        c2 = (x2 - x1) * (v - y1) - (y2 - y1) * (u - x1)
        c3 = -x2 * v + y2 * u
        quad |= (c1 >= 0) & (c2 >= 0) & (c3 >= 0)
    masks = torch.where(labels[:, None, None] == 1, ellipse, quad)
    batch = ShapesBatch(white_on_noise(masks, noise), labels, masks)
    if device is not None:
        batch = ShapesBatch(*(t.to(device) for t in (batch.images, batch.labels, batch.masks)))
    return batch
