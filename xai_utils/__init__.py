"""xai_utils: explanations of image classifiers, batched, on the model's device.

The public API (see README.md, "Architecture"):

    import xai_utils as xu
    model = xu.load_model("efficientnet_lite0")
    img = xu.load_image("photo.jpg")
    x = xu.preprocess(img, model)
    expl = xu.explain("gradient", model, x)

Layers, lowest first (enforced by import-linter, see pyproject.toml): `core` (registry,
hooks, model state, input statistics), `data` and `viz`, `models`, `methods` (importing it
fills the registry), the tools `feature_occlusion`, `inversion` and `nbdt`, `evaluation`,
`runner`, `notebook`.

`import xai_utils` loads neither matplotlib nor zarr: the whole-dataset runner
(`explain_dataset`, `RunSummary`, `RunMismatchError`, `xu.runner`) and the notebook helpers
(`xu.notebook`) are imported on first use, and matplotlib when a figure is drawn.
"""

import importlib as _importlib
import importlib.metadata as _metadata

# The package `methods` is imported for its side effect (it fills the registry); the name
# `xu.methods` is the function below that lists the registered names.
import xai_utils.methods  # noqa: F401
from xai_utils import data, evaluation, feature_occlusion, inversion, models, nbdt  # noqa: F401
from xai_utils.core.hooks import capture, get_layer
from xai_utils.core.inputs import ModelInfo, device, input_spec
from xai_utils.core.registry import (
    Explanation,
    MethodNotApplicable,
    explain,
    method_info,
    methods,
    register,
)
from xai_utils.data.classes import class_name, imagenet_classes
from xai_utils.data.images import (
    ImageLoadError,
    composite,
    image_name,
    load_image,
    load_sample,
    preprocess,
    sample_images,
    to_image,
)
from xai_utils.evaluation import metrics
from xai_utils.models import load_model, predict, wrap
from xai_utils.models.zoo import WeightsUnavailable
from xai_utils.viz import overlay, save_figure

# Imported on first use (PEP 562 `__getattr__` below): name -> the module that defines it.
_LAZY_NAMES = {
    "explain_dataset": "xai_utils.runner",
    "RunMismatchError": "xai_utils.runner",
    "RunSummary": "xai_utils.runner",
}
_LAZY_MODULES = ("notebook", "runner")

__all__ = [
    "Explanation",
    "ImageLoadError",
    "MethodNotApplicable",
    "ModelInfo",
    "RunMismatchError",
    "RunSummary",
    "capture",
    "class_name",
    "composite",
    "device",
    "evaluation",
    "explain",
    "explain_dataset",
    "feature_occlusion",
    "get_layer",
    "image_name",
    "imagenet_classes",
    "input_spec",
    "inversion",
    "load_image",
    "load_model",
    "load_sample",
    "method_info",
    "methods",
    "metrics",
    "models",
    "nbdt",
    "overlay",
    "predict",
    "preprocess",
    "register",
    "sample_images",
    "save_figure",
    "to_image",
    "WeightsUnavailable",
    "wrap",
]


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(_importlib.import_module(_LAZY_NAMES[name]), name)
    elif name in _LAZY_MODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES, *_LAZY_MODULES})


try:
    __version__ = _metadata.version("xai_utils")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
