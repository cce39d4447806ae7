"""Incremental inference for sliding-window occlusion (after Nakandala et al., "Incremental
and Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019).

Occluding a window changes a convolutional layer's output only inside the window's
receptive field, so for the first layers of a network only that region needs computing:
each layer reads a crop of the unoccluded image's cached activation, with the changed patch
of the previous layer pasted in, and returns the changed patch of its own output. Once the
patch covers `stop` of a feature map (or a layer is not local), the patches are pasted into
full maps and the rest of the network runs as usual. The result is exact (up to float
rounding: the same sums over the same values).

Works for models whose forward starts with an `nn.Sequential` called `features`
(VGG-style: torchvision's VGG and AlexNet, the shapes model) and checks itself on the
unoccluded images; `plan` returns None for any other model, and the caller falls back to
full forward passes.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.lrp.canonizers import MergedBatchNorm

ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
               nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout, nn.Dropout2d,
               nn.BatchNorm2d)


def _elementwise(layer: nn.Module) -> bool:
    """A layer that maps each pixel on its own (in eval mode)."""
    if isinstance(layer, MergedBatchNorm | nn.Sequential):
        return all(_elementwise(m) for m in layer.children())
    return isinstance(layer, ELEMENTWISE)


def _geometry(layer: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a square local layer, (1, 1, 0) if elementwise, or None."""
    if _elementwise(layer):
        return 1, 1, 0
    if isinstance(layer, nn.Conv2d):
        k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        if (isinstance(p, str) or layer.padding_mode != "zeros" or d != (1, 1)
                or k[0] != k[1] or s[0] != s[1] or p[0] != p[1]):
            return None
        return k[0], s[0], p[0]
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = (layer.kernel_size, layer.stride, layer.padding)
        if (layer.ceil_mode or not all(isinstance(v, int) for v in (k, s, p))
                or getattr(layer, "dilation", 1) != 1
                or (isinstance(layer, nn.AvgPool2d) and p and not layer.count_include_pad)):
            return None
        return k, s, p
    return None


def _apply(layer: nn.Module, crop: torch.Tensor) -> torch.Tensor:
    """`layer` on a crop that already holds its padding."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(crop, layer.weight, layer.bias, layer.stride, 0, 1, layer.groups)
    if isinstance(layer, nn.MaxPool2d):
        return F.max_pool2d(crop, layer.kernel_size, layer.stride)
    if isinstance(layer, nn.AvgPool2d):
        return F.avg_pool2d(crop, layer.kernel_size, layer.stride)
    return layer(crop)


def _gather(maps: torch.Tensor, img: torch.Tensor, rows: torch.Tensor,
            cols: torch.Tensor) -> torch.Tensor:
    """K x C x m x n crops: maps[img_k, :, rows_k, cols_k] (channels-last memory)."""
    return maps[img[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _paste(crop: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patch: torch.Tensor,
           top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """The crops (whose pixels sit at `rows` x `cols`) with `patch` (K x C x n x n, placed
    at `top`, `left`) written over them where the two overlap."""
    n_r, n_c = patch.shape[-2:]
    pr, pc = rows - top[:, None], cols - left[:, None]
    k = torch.arange(len(patch), device=patch.device)
    values = _gather(patch, k, pr.clamp(0, n_r - 1), pc.clamp(0, n_c - 1))
    return torch.where(_inside(rows, cols, top, left, n_r, n_c), values, crop)


def _inside(rows: torch.Tensor, cols: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
            ext_r, ext_c) -> torch.Tensor:
    """K x 1 x m x n: which pixels of the crops at `rows` x `cols` lie in each box."""
    in_r = (rows >= top[:, None]) & (rows < (top + ext_r)[:, None])
    in_c = (cols >= left[:, None]) & (cols < (left + ext_c)[:, None])
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _affected(start: torch.Tensor, extent: torch.Tensor, k: int, s: int, p: int,
              size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Output range [lo, hi) of a (k, s, p) layer whose input changed in [start, start +
    extent): the outputs whose k-wide input window meets the change."""
    lo = torch.div(start + p - k + s, s, rounding_mode="floor").clamp(min=0)
    hi = (torch.div(start + extent - 1 + p, s, rounding_mode="floor") + 1).clamp(max=size)
    return lo, hi


class Plan:
    """The unoccluded batch's activations, cached, and the layers that run patch-wise."""

    def __init__(self, model: nn.Module, x: torch.Tensor, baseline: torch.Tensor,
                 window: tuple[int, int], stop: float = 0.5) -> None:
        self.model, self.window = model, window
        self.layers = list(model.features)
        maps = [x]                                       # the input of layer i is maps[i]
        for layer in self.layers:
            maps.append(layer(maps[-1]))
        self.output = maps[-1]
        self.depth = self._depth([m.shape[-2:] for m in maps], stop)
        self.maps = maps[:self.depth + 1]
        self.baseline = baseline.expand_as(x)
        self._padded: dict[tuple[int, int], torch.Tensor] = {}

    def _depth(self, sizes: list, stop: float) -> int:
        """Layers run patch-wise: up to the first non-local layer, or the first whose changed
        region for a window in the middle of the image exceeds `stop` of its output."""
        (h, w), (wh, ww) = sizes[0], self.window
        top, left = torch.tensor([(h - wh) // 2]), torch.tensor([(w - ww) // 2])
        ext_r, ext_c = torch.tensor([wh]), torch.tensor([ww])
        for i, layer in enumerate(self.layers):
            geometry = _geometry(layer)
            if geometry is None:
                return i
            top, hi_r = _affected(top, ext_r, *geometry, sizes[i + 1][0])
            left, hi_c = _affected(left, ext_c, *geometry, sizes[i + 1][1])
            ext_r, ext_c = hi_r - top, hi_c - left
            if int(ext_r * ext_c) > stop * sizes[i + 1][0] * sizes[i + 1][1]:
                return i
        return len(self.layers)

    def _pad(self, i: int, p: int) -> torch.Tensor:
        """maps[i] padded by p as layer i pads it (-inf for max-pooling; i = -1: baseline)."""
        if (i, p) not in self._padded:
            maps = self.baseline if i < 0 else self.maps[i]
            fill = -math.inf if i >= 0 and isinstance(self.layers[i], nn.MaxPool2d) else 0.0
            self._padded[i, p] = F.pad(maps, (p,) * 4, value=fill) if p else maps
        return self._padded[i, p]

    def logits(self, img: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Model outputs for the images `img` (K indices into the batch) each occluded by a
        window with corner (`top`, `left`), cut at the image's edges, filled from the
        baseline."""
        x = self.maps[0]
        ext_r = (x.shape[-2] - top).clamp(max=self.window[0])
        ext_c = (x.shape[-1] - left).clamp(max=self.window[1])
        patch = None
        for i, layer in enumerate(self.layers[:self.depth]):
            if patch is not None and _elementwise(layer):
                patch = layer(patch)
                continue
            (k, s, p), size = _geometry(layer), self.maps[i + 1].shape[-2:]
            lo_r, hi_r = _affected(top, ext_r, k, s, p, size[0])
            lo_c, hi_c = _affected(left, ext_c, k, s, p, size[1])
            n_r, n_c = int((hi_r - lo_r).max()), int((hi_c - lo_c).max())
            # one patch size for all: boxes near the far edge move inwards
            lo_r, lo_c = lo_r.clamp(max=size[0] - n_r), lo_c.clamp(max=size[1] - n_c)
            rows = lo_r[:, None] * s - p + torch.arange((n_r - 1) * s + k, device=x.device)
            cols = lo_c[:, None] * s - p + torch.arange((n_c - 1) * s + k, device=x.device)
            crop = _gather(self._pad(i, p), img, rows + p, cols + p)
            if patch is None:                            # the occluded window itself
                base = _gather(self._pad(-1, p), img, rows + p, cols + p)
                crop = torch.where(_inside(rows, cols, top, left, ext_r, ext_c), base, crop)
            else:
                crop = _paste(crop, rows, cols, patch, top, left)
            patch = _apply(layer, crop)
            top, left, ext_r, ext_c = lo_r, lo_c, hi_r - lo_r, hi_c - lo_c
        full = self.maps[self.depth]
        rows = torch.arange(full.shape[-2], device=x.device).expand(len(img), -1)
        cols = torch.arange(full.shape[-1], device=x.device).expand(len(img), -1)
        y = _gather(full, img, rows, cols)
        if patch is None:
            y = torch.where(_inside(rows, cols, top, left, ext_r, ext_c),
                            _gather(self.baseline, img, rows, cols), y)
        else:
            y = _paste(y, rows, cols, patch, top, left)
        for layer in self.layers[self.depth:]:
            y = layer(y)
        with _features_return(self.model, y):
            return self.model(x[:1].expand(len(img), -1, -1, -1))


def plan(model, x: torch.Tensor, baseline: torch.Tensor, window: tuple[int, int],
         stop: float = 0.5) -> Plan | None:
    """A `Plan` for `model` on the batch `x`, or None where incremental inference does not
    apply: no `features` Sequential, a module in training mode, or a forward that does not
    give the same outputs through the cached features (checked here, 1e-4 relative)."""
    features = getattr(model, "features", None)
    if (not isinstance(model, nn.Module) or not isinstance(features, nn.Sequential)
            or len(features) == 0 or any(m.training for m in model.modules())):
        return None
    with torch.no_grad():
        result = Plan(model, x, baseline, window, stop)
        with _features_return(model, result.output) as given:
            through = model(x)
        direct = model(x)
    atol = 1e-6 * direct.abs().max().item()
    if given.calls != 1 or not torch.allclose(through, direct, rtol=1e-4, atol=atol):
        return None
    return result


@contextmanager
def _features_return(model: nn.Module, output: torch.Tensor):
    """Within the block, `model.features` ignores its input and returns `output`."""
    features = model.features
    model.features = given = _Given(output)
    try:
        yield given
    finally:
        model.features = features


class _Given(nn.Module):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output, self.calls = output, 0

    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.output
