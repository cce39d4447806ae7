"""Classifiers from the two model zoos, with the preprocessing and class names their
metadata give: timm (`pretrained_cfg`: mean, std, input size, crop, interpolation) and
torchvision (the default weights' transforms and `meta["categories"]`).

`pretrained=True` downloads through the zoo's own cache (Hugging Face / TORCH_HOME) when
online; offline, without a cached copy, `WeightsUnavailable` names the download at once
(no retries) and says that `pretrained=False` gives the same architecture, randomly
initialised.
"""

from __future__ import annotations

import difflib
import os
import socket
from urllib.parse import urlparse

import torch
from torch import nn

from xai_utils.core.inputs import ModelInfo

ZOOS = ("timm", "torchvision")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that are neither cached nor downloadable from here."""


def _reachable(url: str) -> bool:
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _offline(name: str, url: str, cause: BaseException | None = None) -> WeightsUnavailable:
    detail = f" ({cause})" if cause else ""
    return WeightsUnavailable(
        f"the pretrained weights of {name} must be downloaded from {url}, which cannot be "
        f"reached from here{detail}. Connect once (they are cached afterwards), or pass "
        "pretrained=False for the same architecture with random weights.")


def _unknown(name: str, zoo: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"{zoo} has no model {name!r}.{hint}")


def torchvision_names() -> list[str]:
    """Every classification model torchvision builds."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model(name: str, pretrained: bool, **kwargs) -> tuple[nn.Module, ModelInfo]:
    """A torchvision classifier and the preprocessing of its default weights."""
    import torchvision

    if name not in torchvision_names():
        raise _unknown(name, "torchvision", torchvision_names())
    weights = torchvision.models.get_model_weights(name).DEFAULT
    if pretrained:
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        if not os.path.exists(cached) and not _reachable(weights.url):
            raise _offline(f"torchvision:{name}", weights.url)
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except OSError as exc:  # URLError and friends
            raise _offline(f"torchvision:{name}", weights.url, exc) from exc
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    tf = weights.transforms()
    crop, resize = tf.crop_size[0], tf.resize_size[0]
    size = int(kwargs.get("image_size", crop))
    info = ModelInfo(f"torchvision:{name}", tuple(tf.mean), tuple(tf.std), size,
                     crop / resize, tf.interpolation.value,
                     tuple(weights.meta["categories"]))
    return model, info


def _timm_cached(cfg: dict) -> bool:
    repo = cfg.get("hf_hub_id")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        files = ("model.safetensors", "pytorch_model.bin")
        return any(isinstance(try_to_load_from_cache(repo, f), str) for f in files)
    url = cfg.get("url", "")
    return bool(url) and os.path.exists(
        os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)))


def _timm_classes(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    from xai_utils.data.classes import imagenet_classes

    if num_classes == 1000:
        return imagenet_classes()
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        return tuple(ImageNetInfo(subset).label_descriptions()) if subset else ()
    except (ImportError, ValueError, KeyError):
        return ()


def timm_model(name: str, pretrained: bool, **kwargs) -> tuple[nn.Module, ModelInfo]:
    """A timm classifier and the preprocessing of its `pretrained_cfg`."""
    import timm

    if not timm.is_model(name):
        raise _unknown(name, "timm", timm.list_models())
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(name)
        cfg = cfg.to_dict() if cfg is not None else {}
        repo = cfg.get("hf_hub_id")
        url = f"https://huggingface.co/{repo}" if repo else cfg.get("url", "")
        if not url:
            raise WeightsUnavailable(f"timm has no pretrained weights for {name}; pass "
                                     "pretrained=False for random weights")
        if not _timm_cached(cfg) and not _reachable(url):
            raise _offline(f"timm:{name}", url)
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except OSError as exc:  # huggingface_hub's LocalEntryNotFoundError is one
            raise _offline(f"timm:{name}", url, exc) from exc
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
    cfg = dict(model.pretrained_cfg)
    size = kwargs.get("img_size", cfg.get("input_size", (3, 224, 224))[-1])
    size = size if isinstance(size, int) else int(size[-1])
    info = ModelInfo(f"timm:{name}", tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                     tuple(cfg.get("std", (0.229, 0.224, 0.225))), size,
                     float(cfg.get("crop_pct", 0.875)), cfg.get("interpolation", "bicubic"),
                     _timm_classes(model, model.num_classes))
    return model, info


def zoo_model(name: str, pretrained: bool, **kwargs) -> tuple[nn.Module, ModelInfo]:
    """`timm:NAME` or `torchvision:NAME` -> (model, info)."""
    zoo, _, arch = name.partition(":")
    if zoo == "timm":
        return timm_model(arch, pretrained, **kwargs)
    if zoo == "torchvision":
        return torchvision_model(arch, pretrained, **kwargs)
    raise ValueError(f"unknown model zoo {zoo!r} in {name!r}; use one of {', '.join(ZOOS)}")


# The zoo contract's architectures (tests/unit/test_zoo.py, benchmarks/zoo_matrix.py):
# (name, constructor keywords, input side in px): small inputs where the model allows.
CONTRACT_MODELS: tuple[tuple[str, dict, int], ...] = (
    ("torchvision:resnet18", {}, 64),
    ("torchvision:vgg11_bn", {}, 64),
    ("torchvision:densenet121", {}, 64),
    ("torchvision:mobilenet_v3_small", {}, 64),
    ("torchvision:efficientnet_b0", {}, 64),
    ("torchvision:convnext_tiny", {}, 64),
    ("torchvision:regnet_y_400mf", {}, 64),
    ("torchvision:inception_v3", {"init_weights": False}, 107),
    ("torchvision:vit_b_16", {"image_size": 64}, 64),
    ("torchvision:swin_t", {}, 64),
    ("timm:resnet50", {}, 64),
    ("timm:convnext_nano", {}, 64),
    ("timm:vit_tiny_patch16_224", {"img_size": 64}, 64),
    ("timm:deit_tiny_distilled_patch16_224", {"img_size": 64}, 64),
)
