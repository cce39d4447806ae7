"""`shapes_vgg`, the small VGG-style net of "Deep Introspection" (Dowling 2018, ch. 6) for the
generated shapes task (`xai_utils.data.shapes`), and its deterministic training.

    python -m xai_utils.models.shapes_vgg train     # retrains data/shapes_vgg.pt deterministically
    python -m xai_utils.models.shapes_vgg evaluate  # accuracy on 1000 fresh test images
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from xai_utils.data.paths import DATA_DIR
from xai_utils.data.shapes import CLASSES, TEST_SEED, generate
from xai_utils.models.training import fit

WIDTHS = (8, 16, 32, 64)


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
        from xai_utils.models import load_model

        model = load_model("shapes_vgg", device_="cpu")
    print(f"test accuracy on 1000 fresh images: {accuracy(model):.4f}")


if __name__ == "__main__":
    main()
