"""Saliency methods, one registered method per module; importing this package fills the
`explain` registry."""

from xai_utils.methods import (  # noqa: F401
    cam,
    extremal,
    gradient,
    guided,
    integrated_gradients,
    lrp,
    meaningful,
    occlusion,
    perturbation_cnn,
    rise,
    smoothgrad,
)
