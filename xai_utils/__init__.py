"""xai_utils: explanations of image classifiers, batched, on the model's device.

The public API (see README.md):

    import xai_utils as xu
    model = xu.load_model("efficientnet_lite0")
    img = xu.load_image("photo.jpg")
    x = xu.preprocess(img, model)
    expl = xu.explain("gradient", model, x)
"""

# Method modules: importing them fills the explain() registry (one line per module).
from xai_utils import baselines  # noqa: E402, F401, I001
from xai_utils import inversion  # noqa: E402, F401, I001
from xai_utils import nbdt  # noqa: E402, F401, I001
from xai_utils import lrp  # noqa: E402, F401, I001
from xai_utils import cam  # noqa: E402, F401, I001
from xai_utils import features, occlusion, occlusion_tool  # noqa: E402, F401, I001
from xai_utils import perturbation_cnn  # noqa: E402, F401, I001
from xai_utils import meaningful  # noqa: E402, F401, I001
from xai_utils import extremal  # noqa: E402, F401, I001
from xai_utils.classes import class_name, imagenet_classes
from xai_utils.explain import Explanation, explain, methods, register
from xai_utils.hooks import capture, get_layer
from xai_utils.images import (
    ImageLoadError,
    composite,
    load_image,
    load_sample,
    preprocess,
    sample_images,
    to_image,
)
from xai_utils.models import ModelInfo, device, load_model, predict
from xai_utils.viz import overlay, save_figure

__all__ = [
    "Explanation",
    "ImageLoadError",
    "ModelInfo",
    "capture",
    "class_name",
    "composite",
    "device",
    "explain",
    "get_layer",
    "imagenet_classes",
    "load_image",
    "load_model",
    "load_sample",
    "methods",
    "overlay",
    "predict",
    "preprocess",
    "register",
    "sample_images",
    "save_figure",
    "to_image",
]
__version__ = "0.1.0"
