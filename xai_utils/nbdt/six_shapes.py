"""A labelled offline test bed for NBDTs: six plane figures, a small net, its induced tree.

The two-class shapes task of "Deep Introspection" (Dowling 2018, ch. 6) extended to six
classes that WordNet names: triangle, square, rectangle, hexagon, circle, ellipse (one white
figure on grey noise, random size, position and rotation). Every figure is rasterised in
closed form for the whole batch: a convex polygon with n sides is the intersection of n
half-planes u cos a_k + v sin a_k <= R cos(pi / n), a_k = (2k + 1) pi / n, in the figure's
rotated frame (v stretched by 1 / aspect for the rectangle and ellipse). `train` fits a
small conv/BatchNorm/ReLU net in well under two minutes on a CPU; the induced hierarchy of
its classifier then gets WordNet names (notebook 05 prints the ones its run found).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from xai_utils.core.inputs import ModelInfo
from xai_utils.core.inputs import device as default_device
from xai_utils.data.shapes import rotated_frame, white_on_noise
from xai_utils.models.training import fit

# name, WordNet id, sides (0 = curve), aspect ratio
FIGURES = (("triangle", "n13879320", 3, 1.0), ("square", "n13878634", 4, 1.0),
           ("rectangle", "n13883346", 4, 0.5), ("hexagon", "n13882276", 6, 1.0),
           ("circle", "n13873502", 0, 1.0), ("ellipse", "n13878306", 0, 0.5))
CLASSES = tuple(f[0] for f in FIGURES)
WNIDS = tuple(f[1] for f in FIGURES)
SIZE = 40
TEST_SEED = 7_000_000


@dataclass
class FiguresBatch:
    images: torch.Tensor  # N x 3 x H x W in [0, 1]
    labels: torch.Tensor  # N, index into CLASSES


def generate(n: int, seed: int = 0, size: int = SIZE, device=None) -> FiguresBatch:
    """`n` images, deterministic for a seed, classes drawn uniformly."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(FIGURES), (n,), generator=gen)
    sides = torch.tensor([f[2] for f in FIGURES])[labels]
    aspect = torch.tensor([f[3] for f in FIGURES])[labels]
    radius = (0.22 + 0.14 * torch.rand(n, generator=gen)) * size
    margin = radius + 1
    cx = margin + torch.rand(n, generator=gen) * (size - 2 * margin)
    cy = margin + torch.rand(n, generator=gen) * (size - 2 * margin)
    theta = torch.rand(n, generator=gen) * 2 * math.pi
    noise = torch.rand(n, 1, size, size, generator=gen)

    u, v = rotated_frame(cx, cy, theta, size)
    v = v / aspect[:, None, None]
    r = radius[:, None, None]
    n_sides = sides.clamp_min(1).float()[:, None]  # N x 1
    k = torch.arange(6, dtype=torch.float32)[None]  # up to six half-planes
    angle = (2 * torch.minimum(k, n_sides - 1) + 1) * math.pi / n_sides  # N x 6 (repeats)
    reach = u[:, None] * angle.cos()[..., None, None] + v[:, None] * angle.sin()[..., None, None]
    polygon = reach.amax(1) <= r * torch.cos(math.pi / n_sides)[..., None]
    curve = u**2 + v**2 <= r**2
    masks = torch.where((sides > 0)[:, None, None], polygon, curve)
    batch = FiguresBatch(white_on_noise(masks, noise), labels)
    if device is not None:
        batch = FiguresBatch(batch.images.to(device), batch.labels.to(device))
    return batch


class FiguresNet(nn.Module):
    """conv3x3 / BatchNorm / ReLU / max-pool x 3, a last conv block (`features.9`, 5 x 5),
    global average pooling and one linear classifier (its rows induce the tree)."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width)]
            layers += [nn.ReLU()] + ([nn.MaxPool2d(2)] if i < len(widths) - 1 else [])
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, len(FIGURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def train(steps: int = 300, batch: int = 32, lr: float = 4e-3, seed: int = 0,
          device=None) -> nn.Module:
    """Deterministic training on a fresh stream (Adam, one-cycle); eval mode, with `.xai`."""
    dev = torch.device(device or default_device())
    torch.manual_seed(seed)
    model = FiguresNet().to(dev)
    _fit(model, steps, batch, lr, seed, nn.functional.cross_entropy, "figures net")
    model.xai = ModelInfo("figures_net", (0.0,) * 3, (1.0,) * 3, SIZE, 1.0, "bilinear", CLASSES)
    return model.eval()


def finetune(model: nn.Module, steps: int = 150, tree=None, tree_weight: float = 1.0,
             batch: int = 32, lr: float = 1e-3, seed: int = 1) -> nn.Module:
    """A fine-tuned copy of `model` on a new stream: with `tree`, NBDT's tree-supervision
    loss (`nbdt.tree_supervision_loss`, the tree held fixed); without, plain cross entropy
    (the control: the same extra training without the tree)."""
    import copy

    from xai_utils.nbdt.tree import tree_supervision_loss

    tuned = copy.deepcopy(model)
    if tree is None:
        loss = nn.functional.cross_entropy
    else:
        def loss(logits, labels):
            return tree_supervision_loss(tree, logits, labels, tree_weight)
    _fit(tuned, steps, batch, lr, seed, loss, "tree supervision" if tree else "fine-tuning")
    return tuned.eval()


def _fit(model: nn.Module, steps: int, batch: int, lr: float, seed: int, loss_fn,
         desc: str) -> None:
    """`fit` on `steps` fresh batches of figures (seeded by `seed`), on one CPU thread (a
    net this small runs faster on one thread than on a busy pool)."""
    dev = next(model.parameters()).device

    def stream(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = generate(batch, seed=seed * 1_000_003 + step, device=dev)
        return data.images, data.labels

    fit(model, steps, lr, stream, loss_fn, desc, single_thread=True)


def test_set(n: int = 1000, device=None) -> FiguresBatch:
    """The held-out labelled images (a seed the training stream never reaches)."""
    return generate(n, seed=TEST_SEED, device=device)
