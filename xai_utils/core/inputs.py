"""What a model expects as input: `ModelInfo` (attached as `model.xai` by `load_model`),
the working device, and `input_spec(model)`, the one place every method reads a model's
input statistics from.

A model without `.xai` (a user's own `nn.Module`) gets the documented defaults: ImageNet
mean and standard deviation, 224 px, a 0.875 centre crop, bilinear resizing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """How to feed a model and name its outputs."""

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    class_names: tuple[str, ...] = field(default=(), repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DEFAULT_INFO = ModelInfo("", IMAGENET_MEAN, IMAGENET_STD, 224, 0.875, "bilinear")


@dataclass(frozen=True)
class InputSpec:
    """A model's input statistics as tensors (1 x C x 1 x 1) on a device.

    `low` / `high` are the model inputs of pixel values 0 and 1, i.e. the bounds of any
    image in the model's normalised space (the z^B rule's bounds, the occluders' range).
    """

    info: ModelInfo
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def low(self) -> torch.Tensor:
        return (0 - self.mean) / self.std

    @property
    def high(self) -> torch.Tensor:
        return (1 - self.mean) / self.std

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> model input."""
        return (pixels - self.mean) / self.std

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> pixels (not clamped)."""
        return x * self.std + self.mean


def model_info(model) -> ModelInfo:
    """`model.xai`, or the ImageNet defaults for a model that carries none."""
    info = getattr(model, "xai", None)
    return info if isinstance(info, ModelInfo) else DEFAULT_INFO


def input_spec(model, device=None, dtype=torch.float32) -> InputSpec:
    """Mean, standard deviation and pixel bounds of `model`'s input, as tensors."""
    info = model_info(model)
    def as_tensor(values):
        return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)
    return InputSpec(info, as_tensor(info.mean), as_tensor(info.std))


def device() -> torch.device:
    """The device work runs on: `XAI_DEVICE` if set, else CUDA when available, else CPU."""
    name = os.environ.get("XAI_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
