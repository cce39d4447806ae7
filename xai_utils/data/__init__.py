"""Inputs: images, class names, the generated shapes task (the models are in
`xai_utils.models`)."""

from xai_utils.data import shapes  # noqa: F401
