"""Incremental inference for sliding-window occlusion (after Nakandala et al., "Incremental
and Approximate Inference for Faster Occlusion-based Deep CNN Explanations", SIGMOD 2019).

Occluding a window changes a convolutional layer's output only inside the window's
receptive field. The model is traced into a graph (torch.fx) and run once on the unoccluded
images, keeping every activation. For the occluded images, each value is carried as a
*patch*: a box (one size for all windows of a batch) where it differs from the cached
activation. Convolutions and pooling read a crop of the cached input with the changed
patch pasted in and compute only the outputs whose receptive field meets it; activations
and BatchNorms act on the patch alone; a residual addition adds two patches over their
joint box. Once a patch would cover `stop` of its feature map, or at any other operation
(global pooling, flatten, linear layers), it is pasted into full maps and the graph runs
as usual. The result is exact up to float rounding (the same sums of the same values).

Covers VGG, ResNet and EfficientNet-style networks (timm's "same"-padded convolutions
included). A model that cannot be traced, or a module in training mode, gets None from
`plan`, and the caller falls back to full forward passes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from xai_utils.core.model_state import IDENTITY_IN_EVAL, MergedBatchNorm

ELEMENTWISE = (*IDENTITY_IN_EVAL, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU,
               nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.BatchNorm2d)


def _timm_leaves() -> tuple[tuple, tuple]:
    """timm's modules and functions that tracing must not enter (empty without timm)."""
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


def _elementwise(module: nn.Module) -> bool:
    """Maps each pixel on its own (eval mode): activations, BatchNorm, and containers of
    them such as timm's BatchNormAct2d (a BatchNorm with an activation inside) or a
    merged-BatchNorm stand-in."""
    if isinstance(module, (MergedBatchNorm, nn.Sequential, nn.BatchNorm2d)) and any(
            module.children()):
        return all(_elementwise(m) for m in module.children())
    return isinstance(module, ELEMENTWISE)


def _same_padding(size: int, k: int, s: int) -> tuple[int, int]:
    """timm's "same" padding (before, after) of one axis for kernel k and stride s."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@dataclass
class _Local:
    """A convolution or pooling layer: square kernel k, stride s, and the padding
    (before, after) of the rows and of the columns."""
    module: nn.Module
    k: int
    s: int
    pad_r: tuple[int, int]
    pad_c: tuple[int, int]

    @classmethod
    def of(cls, module: nn.Module, height: int, width: int) -> _Local | None:
        if isinstance(module, nn.Conv2d):
            (k, k2), (s, s2), d = module.kernel_size, module.stride, module.dilation
            if k != k2 or s != s2 or d != (1, 1) or module.padding_mode != "zeros":
                return None
            if type(module).__name__ == "Conv2dSame":
                return cls(module, k, s, _same_padding(height, k, s),
                           _same_padding(width, k, s))
            p = module.padding
            if isinstance(p, str) or type(module) is not nn.Conv2d:
                return None
            return cls(module, k, s, (p[0], p[0]), (p[1], p[1]))
        if type(module) in (nn.MaxPool2d, nn.AvgPool2d):
            k, s, p = module.kernel_size, module.stride, module.padding
            if (module.ceil_mode or not all(isinstance(v, int) for v in (k, s, p))
                    or getattr(module, "dilation", 1) != 1
                    or (isinstance(module, nn.AvgPool2d) and p and not module.count_include_pad)):
                return None
            return cls(module, k, s, (p, p), (p, p))
        return None

    def fill(self) -> float:
        return -math.inf if isinstance(self.module, nn.MaxPool2d) else 0.0

    def apply(self, crop: torch.Tensor) -> torch.Tensor:
        """The layer on a crop that already holds its padding."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(crop, m.weight, m.bias, m.stride, 0, 1, m.groups)
        if isinstance(m, nn.MaxPool2d):
            return F.max_pool2d(crop, self.k, self.s)
        return F.avg_pool2d(crop, self.k, self.s)

    def affected(self, start: torch.Tensor, n: int, size: int,
                 p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Starts and ends (K each) of the output ranges whose k-wide input windows meet
        the changed input [start, start + n) (padding p before)."""
        lo = torch.div(start + p - self.k + self.s, self.s, rounding_mode="floor").clamp(min=0)
        hi = (torch.div(start + n - 1 + p, self.s, rounding_mode="floor") + 1).clamp(max=size)
        return lo, hi


def _gather(maps: torch.Tensor, img: torch.Tensor, rows: torch.Tensor,
            cols: torch.Tensor) -> torch.Tensor:
    """K x C x m x n crops maps[img_k, :, rows_k, cols_k] (channels-last memory)."""
    return maps[img[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _inside(rows, cols, top, left, n_r, n_c) -> torch.Tensor:
    """K x 1 x m x n: which pixels of the crops at `rows` x `cols` lie in each box."""
    in_r = (rows >= top[:, None]) & (rows < (top + n_r)[:, None])
    in_c = (cols >= left[:, None]) & (cols < (left + n_c)[:, None])
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


@dataclass
class _Patch:
    """K maps equal to `cached[img]` except in the box at (top, left) of `values`' size.
    A patch of the geometry pass (`Plan.prepare`) has a `size` and no values."""
    cached: torch.Tensor            # B x C x H x W, the unoccluded activation
    img: torch.Tensor               # K
    top: torch.Tensor               # K
    left: torch.Tensor              # K
    values: torch.Tensor | None     # K x C x n_r x n_c
    size: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.values is not None:
            self.size = tuple(self.values.shape[-2:])

    def crop(self, rows: torch.Tensor, cols: torch.Tensor, padded=None, offset=(0, 0)):
        """The K maps at `rows` x `cols` (coordinates of the unpadded map); `padded`: the
        cached map padded by `offset` rows and columns before (for crops reaching out)."""
        source = self.cached if padded is None else padded
        crop = _gather(source, self.img, rows + offset[0], cols + offset[1])
        n_r, n_c = self.size
        k = torch.arange(len(self.img), device=rows.device)
        inner = _gather(self.values, k, (rows - self.top[:, None]).clamp(0, n_r - 1),
                        (cols - self.left[:, None]).clamp(0, n_c - 1))
        return torch.where(_inside(rows, cols, self.top, self.left, n_r, n_c), inner, crop)

    def full(self) -> torch.Tensor:
        h, w = self.cached.shape[-2:]
        dev = self.img.device
        return self.crop(torch.arange(h, device=dev).expand(len(self.img), -1),
                         torch.arange(w, device=dev).expand(len(self.img), -1))


_FULL = object()  # the geometry pass's stand-in for a value computed on full maps


class Plan:
    """A traced model, its activations on the unoccluded batch, and the patch rules.

    The boxes' sizes are fixed per layer by a geometry pass over every window of the sweep
    (`prepare`: one host read per layer and call), so that the passes over the batches of
    windows never read the device (no synchronisation inside the loop)."""

    def __init__(self, graph: fx.GraphModule, x: torch.Tensor, baseline: torch.Tensor,
                 window: tuple[int, int], stop: float = 0.5) -> None:
        self.graph, self.window, self.stop = graph, window, stop
        self.baseline = baseline.expand_as(x)
        self.x = x
        self.cached: dict[str, torch.Tensor] = {}        # 4-d activations by node name
        self._padded: dict[tuple, torch.Tensor] = {}
        self.sizes: dict[str, tuple[int, int] | None] | None = None  # box sizes by node
        self.flops: dict[str, int] = {}   # multiply-adds per image of each conv / linear node
        self._share: dict[str, float] = {}  # the share of each node's flops a window costs
        self._geometry = False
        self.output = self._run(self._plain, x, cache=True)

    def _plain(self, node: fx.Node, args, kwargs):
        """The node computed as the model would."""
        if node.op == "call_module":
            return self.graph.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return operator.attrgetter(node.target)(self.graph)
        raise NotImplementedError(node.op)

    def _run(self, step, x, cache: bool = False):
        """Evaluate the graph on `x` (a tensor or a patch), node by node through `step`."""
        env: dict[str, object] = {}
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                value = env[node.name] = x
            elif node.op == "output":
                if self._geometry:
                    return None
                return fx.node.map_arg(node.args[0], lambda n: _as_full(env[n.name]))
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                value = env[node.name] = step(node, args, kwargs)
            if cache and isinstance(value, torch.Tensor) and value.dim() == 4:
                self.cached[node.name] = value
            if cache and node.op == "call_module":
                module = self.graph.get_submodule(node.target)
                if isinstance(module, nn.Conv2d):
                    per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
                    self.flops[node.name] = value[0].numel() * per_out
                elif isinstance(module, nn.Linear):
                    self.flops[node.name] = value[0].numel() * module.in_features
        raise RuntimeError("graph without output")

    def _pad(self, name: str, local: _Local) -> torch.Tensor:
        """The cached activation `name` padded as `local` pads its input."""
        key = (name, local.pad_r, local.pad_c, local.fill())
        if key not in self._padded:
            pads = (*local.pad_c, *local.pad_r)
            maps = self.cached[name]
            self._padded[key] = F.pad(maps, pads, value=local.fill()) if any(pads) else maps
        return self._padded[key]

    def prepare(self, top: torch.Tensor, left: torch.Tensor) -> float:
        """Fix every layer's box size for windows with corners (`top`, `left`) (all the
        windows `logits` will see), or mark the layer as run on full maps. Returns the
        estimated cost of a window against a full forward pass: the share of the
        convolutions' and linear layers' multiply-adds it still computes."""
        (h, w), (wh, ww) = self.x.shape[-2:], self.window
        img = torch.zeros_like(top)
        self.sizes, self._share, self._geometry = {}, {}, True
        try:
            self._run(self._step, _Patch(self.x, img, top.clamp(max=h - wh),
                                         left.clamp(max=w - ww), None, (wh, ww)))
        finally:
            self._geometry = False
        total = sum(self.flops.values())
        return sum(f * self._share.get(n, 1.0) for n, f in self.flops.items()) / max(total, 1)

    def logits(self, img: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """Model outputs for the images `img` (K indices into the batch) each occluded by a
        window with corner (`top`, `left`), cut at the image's edges, filled from the
        baseline. Without `prepare`, the box sizes are fitted to these windows."""
        if self.sizes is None:
            self.prepare(top, left)
            try:
                return self.logits(img, top, left)
            finally:
                self.sizes = None
        x = self.x
        (h, w), (wh, ww) = x.shape[-2:], self.window
        box_r, box_c = top.clamp(max=h - wh), left.clamp(max=w - ww)
        rows = box_r[:, None] + torch.arange(wh, device=x.device)
        cols = box_c[:, None] + torch.arange(ww, device=x.device)
        occluded = _inside(rows, cols, top, left, (h - top).clamp(max=wh),
                           (w - left).clamp(max=ww))
        values = torch.where(occluded, _gather(self.baseline, img, rows, cols),
                             _gather(x, img, rows, cols))
        return self._run(self._step, _Patch(x, img, box_r, box_c, values))

    def _step(self, node: fx.Node, args, kwargs):
        """The node on patches where a rule applies, else on full maps."""
        patches = [a for a in args if isinstance(a, _Patch)]
        if node.op == "call_module" and len(args) == 1 and patches and not kwargs:
            module = self.graph.get_submodule(node.target)
            patch = args[0]
            if _elementwise(module):
                return _Patch(self.cached[node.name], patch.img, patch.top, patch.left,
                              None if self._geometry else module(patch.values), patch.size)
            out = self.cached.get(node.name)
            local = _Local.of(module, *patch.cached.shape[-2:])
            if local is not None and out is not None:
                result = self._local(node, local, patch, out)
                if result is not None:
                    return result
        if (node.op == "call_function" and node.target in (operator.add, torch.add)
                and len(patches) == 2 and len(args) == 2 and not kwargs
                and node.name in self.cached):
            return self._add(node, *args)
        if self._geometry:  # no rule applies: this node and what follows run on full maps
            leaves = []
            fx.node.map_aggregate((args, kwargs), leaves.append)
            if any(isinstance(a, _Patch) or a is _FULL for a in leaves):
                return _FULL
        return self._plain(node, fx.node.map_aggregate(args, _as_full),
                           fx.node.map_aggregate(kwargs, _as_full))

    def _local(self, node, local: _Local, patch: _Patch, out: torch.Tensor):
        """A convolution or pooling on the patch's receptive field, or None where that
        would cover more than `stop` of the output."""
        (h, w), (n_r, n_c) = out.shape[-2:], patch.size
        lo_r, hi_r = local.affected(patch.top, n_r, h, local.pad_r[0])
        lo_c, hi_c = local.affected(patch.left, n_c, w, local.pad_c[0])
        if self._geometry:  # the longest range of all windows, read once per layer
            size = int((hi_r - lo_r).max()), int((hi_c - lo_c).max())
            self.sizes[node.name] = None if size[0] * size[1] > self.stop * h * w else size
        if self.sizes[node.name] is None:
            return None
        len_r, len_c = self.sizes[node.name]
        lo_r, lo_c = lo_r.clamp(max=h - len_r), lo_c.clamp(max=w - len_c)  # inwards at the edge
        if self._geometry:
            self._share[node.name] = len_r * len_c / (h * w)
            return _Patch(out, patch.img, lo_r, lo_c, None, (len_r, len_c))
        dev, (k, s) = lo_r.device, (local.k, local.s)
        rows = lo_r[:, None] * s - local.pad_r[0] + torch.arange((len_r - 1) * s + k, device=dev)
        cols = lo_c[:, None] * s - local.pad_c[0] + torch.arange((len_c - 1) * s + k, device=dev)
        padded = self._pad(node.all_input_nodes[0].name, local)
        crop = patch.crop(rows, cols, padded, (local.pad_r[0], local.pad_c[0]))
        return _Patch(out, patch.img, lo_r, lo_c, local.apply(crop))

    def _add(self, node, a: _Patch, b: _Patch) -> _Patch:
        """A residual addition over the box that holds both patches."""
        out = self.cached[node.name]
        h, w = out.shape[-2:]
        top, left = torch.minimum(a.top, b.top), torch.minimum(a.left, b.left)
        if self._geometry:  # the largest joint box of all windows, read once per addition
            self.sizes[node.name] = (
                int((torch.maximum(a.top + a.size[0], b.top + b.size[0]) - top).max()),
                int((torch.maximum(a.left + a.size[1], b.left + b.size[1]) - left).max()))
        n_r, n_c = self.sizes[node.name]
        top, left = top.clamp(max=h - n_r), left.clamp(max=w - n_c)
        if self._geometry:
            return _Patch(out, a.img, top, left, None, (n_r, n_c))
        rows = top[:, None] + torch.arange(n_r, device=top.device)
        cols = left[:, None] + torch.arange(n_c, device=top.device)
        return _Patch(out, a.img, top, left, a.crop(rows, cols) + b.crop(rows, cols))


def _as_full(value):
    return value.full() if isinstance(value, _Patch) else value


def trace(model: nn.Module) -> fx.GraphModule | None:
    """The model as an fx graph (timm's leaf modules kept whole), or None if untraceable."""
    leaves, functions = _timm_leaves()

    class Tracer(fx.Tracer):
        def is_leaf_module(self, module, name):
            return isinstance(module, leaves) or super().is_leaf_module(module, name)

    try:
        graph = Tracer(autowrap_functions=functions).trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: run full passes
        return None
    return fx.GraphModule(model, graph)


def plan(model, x: torch.Tensor, baseline: torch.Tensor, window: tuple[int, int],
         stop: float = 0.5) -> Plan | None:
    """A `Plan` for `model` on the batch `x`, or None where incremental inference does not
    apply: not an nn.Module, a module in training mode, a model that cannot be traced or
    takes more than one input, or a traced graph whose output differs from the model's
    (checked here, 1e-4 relative)."""
    if not isinstance(model, nn.Module) or any(m.training for m in model.modules()):
        return None
    graph = trace(model)
    if graph is None or sum(n.op == "placeholder" for n in graph.graph.nodes) != 1:
        return None
    with torch.no_grad():
        result = Plan(graph, x, baseline, window, stop)
        direct = model(x)
    through = result.output
    if not isinstance(through, torch.Tensor) or through.shape != direct.shape:
        return None
    atol = 1e-6 * direct.abs().max().item()
    return result if torch.allclose(through, direct, rtol=1e-4, atol=atol) else None
