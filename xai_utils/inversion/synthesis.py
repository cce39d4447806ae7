"""Representation inversion, feature synthesis and boundary images (`xu.inversion`).

- `invert`: pre-images of any named layer (Mahendran & Vedaldi, CVPR 2015 / IJCV 2016; "Deep
  Introspection" ch. 4.2), several restarts from fresh noise optimised together as one
  batch. The objective, regularisers and optimiser live in `preimage.py`.
- `synthesize`: feature synthesis ("Deep Introspection" ch. 4.3): keep one feature's
  bounding box, fill the rest with noise (option: centre the box, or resize the box to the
  whole input, the thesis's two variants), take its representation at a deep layer and
  invert it.
- `boundary_target`: a representation between two classes ("Deep Introspection", future work
  7.2.1), from raw softmax values (0.5 / 0.5, the rest 0 plus optional noise) or from the
  mean of both classes' mean representations; invert it with `invert_target`.
- `error_stats`: reconstruction error and consistency as in "Deep Introspection" ch. 6.3:
  the mean over features of the mean normalised representation error over restarts, and of
  its standard deviation over restarts.

Departures: the noise that isolates a feature is uniform in [0, 1] pixel space (mapped with
the model's normalisation; grey for the grey shapes images), drawn from a seeded generator;
the thesis used SciPy's imresize, we use bilinear interpolation for the resize variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.core.inputs import input_spec, model_info
from xai_utils.core.model_state import model_device
from xai_utils.core.ops import bounding_boxes
from xai_utils.core.registry import explain
from xai_utils.feature_occlusion.clusters import extract
from xai_utils.inversion.preimage import Result, representation, run

Box = tuple[int, int, int, int]   # top, left, bottom, right (exclusive), in input pixels


@lru_cache(maxsize=8)
def _natural_stats(name: str, mean: tuple, std: tuple) -> tuple[float, tuple[float, ...]]:
    if name == "shapes_vgg":
        from xai_utils.data import shapes

        imgs = shapes.generate(64, seed=1234).images
    else:
        from xai_utils.data.images import _resize_and_crop, load_sample, sample_images

        arrays = [_resize_and_crop(load_sample(n), 224, 0.875, "bilinear") for n in sample_images()]
        imgs = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    x = (imgs - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    centre = x.mean((0, 2, 3), keepdim=True)
    return float((x - centre).pow(2).sum(1).sqrt().mean()), tuple(centre.flatten().tolist())


def _natural(model: nn.Module) -> tuple[float, tuple[float, ...]]:
    info = model_info(model)
    return _natural_stats(info.name, tuple(info.mean), tuple(info.std))


def natural_bound(model: nn.Module) -> float:
    """B: the mean pixel-vector norm of natural images in the model's normalised input space
    (the offline sample photos; generated shapes images for `shapes_vgg`), measured from
    their mean (`natural_centre`)."""
    return _natural(model)[0]


def natural_centre(model: nn.Module) -> torch.Tensor:
    """The mean pixel of those natural images in the model's input units (1 x 3 x 1 x 1):
    the point the inversion's image prior is centred on."""
    return torch.tensor(_natural(model)[1]).view(1, 3, 1, 1)


def default_layers(model: nn.Module, maps: int = 3) -> tuple[list[str], list[float]]:
    """Layers to invert when none are named, and the C of each (MV16's weight on the
    representation loss: large for feature maps, where the loss is small, 1 for the code).

    Up to `maps` feature maps spread over the stages of `cam.stage_layers` (the last stage
    left out), then the globally pooled features the classifier reads, where a module
    computes them (otherwise the last map). C: 100 for the early maps, 20 for the last map,
    1 for the pooled vector (the values the notebook's defaults use on EfficientNet-Lite0).
    """
    from xai_utils.methods.cam import global_pool_layer, stage_layers

    stages = stage_layers(model)
    early = stages[:-1]
    if len(early) > maps:
        early = [early[round(i)] for i in np.linspace(0, len(early) - 2, maps)]
    pool = global_pool_layer(model)
    layers = early + ([pool] if pool else stages[-1:])
    cs = [100.0] * (len(early) - 1) + [20.0] * bool(early) + [1.0 if pool else 20.0]
    return layers, cs


def layer_stride(model: nn.Module, layer: str, size: int = 224) -> int:
    """Input pixels per feature-map pixel at `layer` (32 for vector-valued layers)."""
    p = next(model.parameters())
    feat = representation(model, torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype),
                          layer)
    return max(1, size // feat.shape[-1]) if feat.dim() == 4 else 32


def invert_target(model: nn.Module, target: torch.Tensor | Sequence[torch.Tensor],
                  layer: str | Sequence[str], size: int | tuple[int, int], *,
                  restarts: int = 4, seed: int = 0, jitter: int | Sequence[int] | None = None,
                  bound: float | None = None, **kw) -> Result:
    """Invert N target representations (N x feature shape, or a list), `restarts` each, in
    one batch.

    Batch element n * restarts + r inverts target n from the noise of seed `seed + r`, so
    restart r equals a sequential run with `restarts=1, seed=seed + r`. `layer` is one name
    or one per target; `jitter` None = a quarter of each element's layer's stride (MV16),
    else one value or one per element. Other keyword
    arguments go to `preimage.run` (steps, lr, optimizer, C, tv_scale, alpha, beta, clamp,
    snapshots, progress); per-element C / tv_scale lists have N * restarts entries.
    """
    n = len(target)
    layers = [layer] * n if isinstance(layer, str) else list(layer)
    if len(layers) != n:
        raise ValueError(f"{len(layers)} layers for {n} targets")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if jitter is None:
        strides = {name: layer_stride(model, name, size[0]) for name in set(layers)}
        jitter = [strides[name] // 4 for name in layers for _ in range(restarts)]
    bound = natural_bound(model) if bound is None else bound
    kw.setdefault("centre", natural_centre(model))
    targets = [t for t in target for _ in range(restarts)]
    return run(model, targets, [name for name in layers for _ in range(restarts)], size, bound,
               seeds=[seed + r for _ in range(n) for r in range(restarts)], jitter=jitter, **kw)


def invert(model: nn.Module, x: torch.Tensor, layer: str | Sequence[str], **kw) -> Result:
    """Pre-images of the representation of each image of `x` at `layer` (see invert_target)."""
    layers = [layer] * x.shape[0] if isinstance(layer, str) else list(layer)
    target = [representation(model, x[i:i + 1], name)[0] for i, name in enumerate(layers)]
    return invert_target(model, target, layers, tuple(x.shape[-2:]), **kw)


def bounding_box(mask: torch.Tensor, margin: int = 0) -> Box:
    """The minimal (top, left, bottom, right) box around the True pixels of an H x W mask."""
    top, left, bottom, right = bounding_boxes(mask.bool()[None])[0].tolist()
    if bottom < 0:
        raise ValueError("the feature mask is empty")
    h, w = mask.shape
    return (max(0, top - margin), max(0, left - margin),
            min(h, bottom + 1 + margin), min(w, right + 1 + margin))


def noise_like(x: torch.Tensor, model: nn.Module, seed: int = 0,
               grey: bool | None = None) -> torch.Tensor:
    """Uniform [0, 1] pixel noise in the model's normalised space, shaped like `x`; grey
    (one value for all channels) for `shapes_vgg`, whose images are grey noise."""
    spec = input_spec(model, x.device)
    grey = model_info(model).name == "shapes_vgg" if grey is None else grey
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (x.shape[0], 1, *x.shape[2:]) if grey else x.shape
    u = torch.rand(shape, generator=gen, dtype=x.dtype).expand(x.shape).to(x.device)
    return spec.normalize(u)


def isolate(model: nn.Module, x: torch.Tensor, boxes: Sequence[Box], *, mode: str = "noise",
            seed: int = 0) -> torch.Tensor:
    """One image per box: x[i] kept inside boxes[i] and noise elsewhere (mode "noise"), the
    box moved to the centre of a noise image ("centre"), or the box alone resized to the
    whole input ("resize"; the aspect ratio changes, as in the thesis's Fig. 4.13)."""
    if mode not in ("noise", "centre", "resize"):
        raise ValueError(f"mode must be 'noise', 'centre' or 'resize', got {mode!r}")
    if len(boxes) != x.shape[0]:
        raise ValueError(f"{len(boxes)} boxes for {x.shape[0]} images")
    out = noise_like(x, model, seed)
    h, w = x.shape[-2:]
    for i, (t, l, b, r) in enumerate(boxes):
        if not (0 <= t < b <= h and 0 <= l < r <= w):
            raise ValueError(f"box {(t, l, b, r)} is empty or outside the {h} x {w} image")
        patch = x[i, :, t:b, l:r]
        if mode == "resize":
            out[i] = F.interpolate(patch[None], size=(h, w), mode="bilinear",
                                   align_corners=False)[0]
        else:
            top, left = ((h - (b - t)) // 2, (w - (r - l)) // 2) if mode == "centre" else (t, l)
            out[i, :, top:top + b - t, left:left + r - l] = patch
    return out


def synthesize(model: nn.Module, x: torch.Tensor, boxes: Sequence[Box], layer: str, *,
               mode: str = "noise", noise_seed: int = 0, **kw) -> tuple[torch.Tensor, Result]:
    """Feature synthesis: the isolated inputs and the pre-images of their representations
    at `layer` (`restarts` per feature; keyword arguments as in `invert_target`)."""
    sources = isolate(model, x, boxes, mode=mode, seed=noise_seed)
    return sources, invert(model, sources, layer, **kw)


def boundary_target(model: nn.Module, class_a: int, class_b: int, *, mode: str = "raw",
                    layer: str = "softmax", images_a: torch.Tensor | None = None,
                    images_b: torch.Tensor | None = None, noise: float = 0.0,
                    seed: int = 0) -> torch.Tensor:
    """A 1 x feature target between two classes ("Deep Introspection" 7.2.1).

    "raw": softmax output with 0.5 on both classes and 0 elsewhere (plus |noise| on the
    others, renormalised); invert it at layer "softmax". "mean": the average of the two
    classes' mean representations at `layer` over `images_a` and `images_b`.
    """
    if mode == "raw":
        k = model_info(model).num_classes or None
        if not k:
            raise ValueError("raw boundary targets need model.xai.class_names")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        t = noise * torch.rand(1, k, generator=gen)
        t[0, [class_a, class_b]] = 0.5
        t = t / t.sum()
        return t.to(model_device(model))
    if mode == "mean":
        if images_a is None or images_b is None:
            raise ValueError("mean boundary targets need images_a and images_b")
        ra = representation(model, images_a, layer).mean(0)
        rb = representation(model, images_b, layer).mean(0)
        return ((ra + rb) / 2)[None]
    raise ValueError(f"mode must be 'raw' or 'mean', got {mode!r}")


def error_stats(errors: torch.Tensor, restarts: int) -> dict[str, float]:
    """As in "Deep Introspection" ch. 6.3: errors of features x restarts (flat, feature-major) ->
    mean error (mean over features of the mean over restarts) and mean std over restarts."""
    e = errors.detach().double().view(-1, restarts)
    return {"mean_error": float(e.mean(1).mean()),
            "std_over_restarts": float(e.std(1, unbiased=True).mean())}


def feature_boxes(model: nn.Module, x: torch.Tensor, k: int = 2, **extract_kw) -> list[list[Box]]:
    """Bounding boxes of the `k` most relevant features of each image, from the thesis's
    feature extraction (`features.extract`, ch. 3.3) on |gradient x input| maps.
    Images with fewer features get a centred half-size box, so each list has k boxes."""
    sal = explain("gradient", model, x).saliency.detach()
    rel = sal.abs() if sal.dim() == 3 else sal.abs().sum(1)
    found = extract(rel, sign="absolute", **extract_kw)
    h, w = x.shape[-2:]
    default = (h // 4, w // 4, h - h // 4, w - w // 4)
    out = []
    for i in range(x.shape[0]):
        masks = found.masks(i)[:k]
        out.append([bounding_box(m) for m in masks] + [default] * (k - len(masks)))
    return out
