"""The synthetic shapes benchmark of "Deep Introspection" (Dowling 2018, ch. 6) and its
small VGG-style net.

Each image is grey uniform noise with one white quadrilateral or ellipse at a random
position, size and rotation; the shape's own pixels are returned as a ground-truth mask.
Images are rasterised in closed form for a whole batch at once (no Python loop per image),
112 x 112 like the thesis, replicated to three channels in [0, 1].

    python -m xai_utils.data.shapes train    # retrains data/shapes_vgg.pt deterministically
    python -m xai_utils.data.shapes evaluate  # accuracy on 1000 fresh test images
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xai_utils.data.paths import DATA_DIR
from xai_utils.data.training import fit

IMAGE_SIZE = 112
CLASSES = ("quadrilateral", "ellipse")
WIDTHS = (8, 16, 32, 64)
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


class ShapesVGG(nn.Module):
    """A plain VGG-style net: 3x3 conv / ReLU / 2x2 max-pool blocks, global average pooling
    and one linear layer (no BatchNorm), so CAM, Grad-CAM and LRP apply without rewrites.
    Its input is the image in [0, 1]; the final 14 x 14 feature map is `features.10`.

    `batchnorm=True` builds the training-time twin with BatchNorm after each convolution;
    `fold_batchnorm` turns it back into the plain net (same outputs in eval mode).
    """

    def __init__(self, widths: tuple[int, ...] = WIDTHS, batchnorm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if batchnorm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU())
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@torch.no_grad()
def fold_batchnorm(trained: ShapesVGG) -> ShapesVGG:
    """The plain ShapesVGG equal to `trained` (with BatchNorm) in eval mode: each BatchNorm
    is merged into the convolution before it, w' = w * g / s, b' = (b - mu) * g / s + beta."""
    convs = [m for m in trained.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in trained.features if isinstance(m, nn.BatchNorm2d)]
    plain = ShapesVGG(tuple(c.out_channels for c in convs))
    for conv, bn, target in zip(convs, norms,
                                [m for m in plain.features if isinstance(m, nn.Conv2d)],
                                strict=True):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        target.weight.copy_(conv.weight * scale[:, None, None, None])
        target.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
    plain.classifier.load_state_dict(trained.classifier.state_dict())
    return plain.eval()


def weights_path() -> Path:
    return DATA_DIR / "shapes_vgg.pt"


@torch.no_grad()
def accuracy(model: nn.Module, n: int = 1000, seed: int = TEST_SEED, batch: int = 250) -> float:
    """Top-1 accuracy on `n` freshly generated images."""
    dev = next(model.parameters()).device
    correct = 0
    for start in range(0, n, batch):
        data = generate(min(batch, n - start), seed=seed * 100_003 + start, device=dev)
        correct += (model(data.images).argmax(1) == data.labels).sum().item()
    return correct / n


def train(steps: int = 900, batch: int = 64, lr: float = 3e-3, seed: int = 0,
          out: Path | None = None) -> nn.Module:
    """Deterministic training on a fresh stream of images, then BatchNorm folding.

    The plain net barely moves from chance for hundreds of steps on this task, so it is
    trained with BatchNorm (Adam, one-cycle schedule), whose statistics are then re-estimated
    on 32 fresh batches and folded into the convolutions: the saved net has none.
    """
    torch.manual_seed(seed)
    model = ShapesVGG(batchnorm=True)
    start = time.perf_counter()

    def stream(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = generate(batch, seed=seed * 1_000_003 + step)
        return data.images, data.labels

    fit(model, steps, lr, stream, nn.functional.cross_entropy, "shapes_vgg")
    with torch.no_grad():  # cumulative BatchNorm statistics of the final weights
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for i in range(32):
            model(generate(batch, seed=seed * 1_000_003 + steps + i).images)
    model.eval()
    plain = fold_batchnorm(model)
    path = out or weights_path()
    torch.save(plain.state_dict(), path)
    print(f"saved {path}; {time.perf_counter() - start:.0f} s")
    return plain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "evaluate"])
    parser.add_argument("--steps", type=int, default=900)
    args = parser.parse_args(argv)
    if args.command == "train":
        model = train(steps=args.steps)
    else:
        from xai_utils.data.models import load_model

        model = load_model("shapes_vgg", device_="cpu")
    print(f"test accuracy on 1000 fresh images: {accuracy(model):.4f}")


if __name__ == "__main__":
    main()
