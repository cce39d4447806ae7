"""xai_utils: explanations of image classifiers, batched, on the model's device.

The public API (see README.md, "Architecture"):

    import xai_utils as xu
    model = xu.load_model("efficientnet_lite0")
    img = xu.load_image("photo.jpg")
    x = xu.preprocess(img, model)
    expl = xu.explain("gradient", model, x)

Layers, lowest first (enforced by import-linter, see pyproject.toml): `core` (registry,
hooks, model state, input statistics), `data` and `viz`, `methods` (importing it fills the
registry), the tools `features`, `inversion` and `nbdt`, `evaluation`, `notebook`.
"""

# The package `methods` is imported for its side effect (it fills the registry); the name
# `xu.methods` is the function below that lists the registered names.
import xai_utils.methods  # noqa: F401, I001
from xai_utils import data, evaluation, features, inversion, nbdt  # noqa: F401
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
from xai_utils.data.models import load_model, predict, wrap
from xai_utils.data.zoo import WeightsUnavailable
from xai_utils.evaluation import metrics
from xai_utils.runner import explain_dataset
from xai_utils.viz import overlay, save_figure

__all__ = [
    "Explanation",
    "ImageLoadError",
    "MethodNotApplicable",
    "ModelInfo",
    "capture",
    "class_name",
    "composite",
    "device",
    "evaluation",
    "explain",
    "explain_dataset",
    "features",
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
__version__ = "0.1.0"
