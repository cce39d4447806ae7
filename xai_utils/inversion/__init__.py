"""Representation inversion and feature synthesis (`xu.inversion`): the pre-image engine
(`preimage`), a plain-Adam reference without jitter for it (`control`) and what the thesis
builds on it (`synthesis`)."""

from xai_utils.inversion.control import adam_reference, reference_target
from xai_utils.inversion.preimage import (
    Result,
    alpha_norm,
    alpha_norm_grad,
    clamp_pixels,
    layer_outputs,
    representation,
    run,
    tv_prior,
    tv_prior_grad,
)
from xai_utils.inversion.synthesis import (
    Box,
    boundary_target,
    bounding_box,
    default_layers,
    error_stats,
    feature_boxes,
    invert,
    invert_target,
    isolate,
    layer_stride,
    natural_bound,
    natural_centre,
    noise_like,
    synthesize,
)

__all__ = [
    "Box", "Result", "adam_reference", "alpha_norm", "alpha_norm_grad", "boundary_target",
    "bounding_box", "clamp_pixels", "default_layers", "error_stats", "feature_boxes", "invert",
    "invert_target", "isolate", "layer_outputs", "layer_stride", "natural_bound",
    "natural_centre", "noise_like", "reference_target", "representation", "run", "synthesize",
    "tv_prior", "tv_prior_grad",
]
