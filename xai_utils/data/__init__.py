"""Inputs: models from the zoos and the embedded ones, images, class names, the generated
shapes task."""

from xai_utils.data import shapes  # noqa: F401
