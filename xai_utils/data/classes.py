"""ImageNet-1k class names, from the category list that torchvision bundles (no download)."""

from __future__ import annotations

from functools import lru_cache

from xai_utils.core.inputs import model_info


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def class_name(model, index: int) -> str:
    """Human-readable name of class `index` for `model` (falls back to the index)."""
    names = model_info(model).class_names
    if not names or not 0 <= int(index) < len(names):
        return str(int(index))
    return names[int(index)]
