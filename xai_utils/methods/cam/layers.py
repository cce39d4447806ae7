"""Which layer CAM and Grad-CAM read, and how its output becomes K x h x w maps.

A layer's output per image is one of three layouts, told apart by the input's size (the
map must tile the image with one stride in both directions):

- "nchw": K x h x w (convolutional nets);
- "nhwc": h x w x K (Swin and other channel-last stages);
- "tokens": N x K with N = prefix + h w (ViT, DeiT: the class, distillation or register
  tokens come first; they are dropped, and the rest reshaped to the patch grid).

Anything else (a 2-D vector, attention heads x tokens x dims, ...) is refused with
`MethodNotApplicable` naming the layer, never read as a map. Default layers, by
architecture: ResNets `layer4`; timm EfficientNets `bn2`; VGG-style `features` Sequentials
their last ReLU; DenseNet `features.norm5` with the ReLU its forward applies functionally;
ViT / DeiT whose head reads the class token(s): the last block's first LayerNorm (the
tokens that block's attention reads; on the block's output only the class token reaches
the head, so patch-token gradients are zero there); other ViTs, Swin (channel-last) and
timm `stages` nets: the last block or stage; otherwise the last module with a map output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from xai_utils.core.inputs import model_info
from xai_utils.core.model_state import PASS_THROUGH, model_device
from xai_utils.core.outputs import unwrap
from xai_utils.core.registry import MethodNotApplicable


@dataclass(frozen=True)
class LayerSpec:
    """A layer and how to read it: `layout` "nchw", "nhwc", "tokens" or "auto" (inferred
    from the output's shape); `prefix` tokens to drop (None: inferred); `relu` applied to
    the activation (DenseNet's functional ReLU after `norm5`)."""

    name: str
    layout: str = "auto"
    prefix: int | None = None
    relu: bool = False


def _grid_ok(h: int, w: int, height: int, width: int) -> bool:
    if h < 1 or w < 1 or h > height or w > width:
        return False
    sh, sw = height / h, width / w
    return abs(sh - sw) <= 0.25 * max(sh, sw)


def _token_grid(n: int, height: int, width: int, prefix: int | None) -> tuple[int, int, int]:
    for p in ([prefix] if prefix is not None else range(9)):
        cells = n - p
        if cells < 1:
            continue
        h = round(math.sqrt(cells * height / width))
        if h >= 1 and cells % h == 0 and _grid_ok(h, cells // h, height, width):
            return p, h, cells // h
    raise ValueError


def infer_layout(name: str, tail: tuple[int, ...], size: tuple[int, int],
                 spec: LayerSpec | None = None) -> tuple[str, int, int, int]:
    """(layout, prefix, h, w) of a per-image output shape `tail` for an input of `size`."""
    layout = spec.layout if spec else "auto"
    height, width = size
    if len(tail) == 3:
        if layout in ("auto", "nchw") and _grid_ok(tail[1], tail[2], height, width):
            return "nchw", 0, tail[1], tail[2]
        if layout in ("auto", "nhwc") and _grid_ok(tail[0], tail[1], height, width):
            return "nhwc", 0, tail[0], tail[1]
    if len(tail) == 2 and layout in ("auto", "tokens"):
        try:
            p, h, w = _token_grid(tail[0], height, width, spec.prefix if spec else None)
            return "tokens", p, h, w
        except ValueError:
            pass
    shape = " x ".join(map(str, tail))
    raise MethodNotApplicable(
        f"layer {name!r} outputs {shape} per image, which is neither channels x height x "
        f"width, height x width x channels, nor tokens on a patch grid of the "
        f"{height} x {width} input; pass layer= a block's output (list them with "
        "[n for n, _ in model.named_modules()])")


def to_maps(t: torch.Tensor, lead: int, name: str, size: tuple[int, int],
            spec: LayerSpec | None = None, activation: bool = True) -> torch.Tensor:
    """`t` (`lead` leading dims, then the layer's per-image shape) -> (lead..., K, h, w)."""
    layout, prefix, h, w = infer_layout(name, tuple(t.shape[lead:]), size, spec)
    flat = t.reshape(-1, *t.shape[lead:])
    if layout == "nhwc":
        flat = flat.permute(0, 3, 1, 2)
    elif layout == "tokens":
        flat = flat[:, prefix:].transpose(1, 2).reshape(flat.shape[0], -1, h, w)
    if activation and spec is not None and spec.relu:
        flat = flat.clamp_min(0)
    return flat.reshape(*t.shape[:lead], *flat.shape[1:])


def _last_index(container: nn.Module) -> str:
    return [n for n, _ in container.named_children()][-1]


def _rules(model: nn.Module) -> LayerSpec | None:
    kind = type(model).__name__
    if isinstance(getattr(model, "layer4", None), nn.Module):
        return LayerSpec("layer4", "nchw")
    if kind == "EfficientNet" and hasattr(model, "bn2"):
        return LayerSpec("bn2", "nchw")
    if kind == "DenseNet" and hasattr(getattr(model, "features", None), "norm5"):
        return LayerSpec("features.norm5", "nchw", relu=True)
    encoder = getattr(model, "encoder", None)
    if kind == "VisionTransformer" and hasattr(encoder, "layers"):  # torchvision
        last = f"encoder.layers.{_last_index(encoder.layers)}"
        return LayerSpec(f"{last}.ln_1", "tokens", 1)
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and hasattr(model, "num_prefix_tokens"):
        last = f"blocks.{_last_index(blocks)}"  # timm ViT, DeiT, ...
        token_pool = getattr(model, "global_pool", "token") in ("token", "")
        has_norm1 = hasattr(blocks[-1], "norm1")
        name = f"{last}.norm1" if token_pool and has_norm1 else last
        return LayerSpec(name, "tokens", int(model.num_prefix_tokens))
    if kind == "SwinTransformer":
        features, layers = getattr(model, "features", None), getattr(model, "layers", None)
        if isinstance(features, nn.Sequential):  # torchvision
            stage = f"features.{_last_index(features)}"
            return LayerSpec(f"{stage}.{_last_index(features[-1])}", "nhwc")
        if isinstance(layers, nn.Sequential) and hasattr(layers[-1], "blocks"):  # timm
            stage = f"layers.{_last_index(layers)}.blocks"
            return LayerSpec(f"{stage}.{_last_index(layers[-1].blocks)}", "nhwc")
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        relus = [n for n, m in features.named_children() if isinstance(m, (nn.ReLU, nn.ReLU6))]
        return LayerSpec(f"features.{relus[-1]}" if relus else "features", "nchw")
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.Sequential | nn.ModuleList) and len(stages):
        return LayerSpec(f"stages.{_last_index(stages)}")
    return None


def _probe(model: nn.Module) -> LayerSpec:
    """The last module (not a pass-through) whose output reads as a map."""
    size = model_info(model).input_size
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    found: list[LayerSpec] = []
    handles = []
    for name, module in model.named_modules():
        if name and not isinstance(module, PASS_THROUGH):
            def hook(_m, _i, out, name=name):
                if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
                    return
                try:
                    layout, *_ = infer_layout(name, tuple(out.shape[1:]), (size, size))
                except MethodNotApplicable:
                    return
                if layout != "nchw" or min(out.shape[2:]) > 1:
                    found.append(LayerSpec(name, layout))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=model_device(model), dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise MethodNotApplicable(f"{type(model).__name__} has no layer whose output reads as "
                                  "a spatial map or patch tokens; pass layer=... explicitly")
    return found[-1]


def default_layer_spec(model: nn.Module) -> LayerSpec:
    """The layer Grad-CAM reads by default (see the module docstring) and its layout."""
    inner, prefix = unwrap(model)
    spec = _rules(inner) or _probe(inner)
    return replace(spec, name=prefix + spec.name)


def default_layer(model: nn.Module) -> str:
    """The name of `default_layer_spec(model)`."""
    return default_layer_spec(model).name


def cam_layer_spec(model: nn.Module) -> LayerSpec:
    """The map the global average pool reads: the default layer, except for torchvision's
    Swin, where a LayerNorm (per position) sits between the last block and the pool."""
    inner, prefix = unwrap(model)
    if type(inner).__name__ == "SwinTransformer" and isinstance(
            getattr(inner, "norm", None), nn.LayerNorm) and hasattr(inner, "permute"):
        return LayerSpec(prefix + "norm", "nhwc")
    return default_layer_spec(model)


def layer_spec(model: nn.Module, layer: str | None, cam: bool = False) -> LayerSpec:
    """The spec of a named layer (the default's layout when it is the default)."""
    default = cam_layer_spec(model) if cam else default_layer_spec(model)
    if layer is None or layer == default.name:
        return default
    return LayerSpec(layer)


def last_conv_up_to(model: nn.Module, layer: str) -> str:
    """The last convolution in module order up to the end of `layer` (`layer` itself left
    out): the layer a CAM hooked one step too early reads, before the normalisation, residual
    add or activation that the pool sees (`conv_head` before `bn2`, `layer4.1.conv2` in
    `layer4`)."""
    names = [n for n, _ in model.named_modules()]
    if layer not in names:
        raise ValueError(f"{type(model).__name__} has no layer {layer!r}")
    end = names.index(layer) + 1
    while end < len(names) and names[end].startswith(layer + "."):
        end += 1
    convs = [n for n, m in list(model.named_modules())[:end]
             if isinstance(m, nn.Conv2d) and n != layer]
    if not convs:
        raise MethodNotApplicable(f"no convolution runs before {layer!r}")
    return convs[-1]


def stage_layers(model: nn.Module) -> list[str]:
    """Layers from early to last for a Grad-CAM-across-depth figure (ends at the default)."""
    last = default_layer(model)
    if last == "layer4":
        return ["layer1", "layer2", "layer3", "layer4"]
    if last == "bn2" and isinstance(getattr(model, "blocks", None), nn.Sequential):
        return [f"blocks.{n}" for n, _ in model.blocks.named_children()][1:] + ["bn2"]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential) and type(model).__name__ not in (
            "SwinTransformer", "DenseNet"):
        kids = list(features.named_children())
        before_pool = [kids[i - 1][0] for i, (_, m) in enumerate(kids)
                       if isinstance(m, nn.MaxPool2d) and i > 0]
        names = [f"features.{n}" for n in before_pool]
        return [n for n in names if n != last] + [last]
    return [last]
