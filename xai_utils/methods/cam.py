"""Class activation maps: CAM (Zhou et al. 2016) and Grad-CAM (Selvaraju et al. 2017).

Both weight the K channels of one convolutional feature map A (B x K x h x w) and sum them:

    map_c = [ReLU]( sum_k  w_ck A_k ),  then bilinear upsampling to the input size.

- CAM (Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative
  Localization", CVPR 2016, eq. 2): w_ck are the rows of the final linear layer, and A is the
  final feature map, the one the global average pool reads (after the last activation or
  residual add). Then ``mean_ij CAM_c + b_c = logit_c`` exactly; `CAM` checks that identity
  on every call, which catches a wrong layer (e.g. a conv before its BatchNorm, residual add
  and ReLU). A head that is not global-average-pool + one linear layer is an error.
- Grad-CAM (Selvaraju et al., ICCV 2017, arXiv 1610.02391, eqs. 1-2): any layer;
  alpha_ck = mean_ij d y_c / d A_k(ij), map = ReLU(sum_k alpha_ck A_k). With a GAP + linear
  head, alpha_ck = w_ck / (h w), so Grad-CAM = ReLU(CAM) / (h w). Counterfactual maps
  (Sec. 3 of the paper) negate the weights: regions that speak *against* the class.

Departures, on purpose: the forward pass runs without autograd up to the explained layer,
whose output starts a fresh graph; gradients are taken with `torch.autograd.grad` with
respect to that activation only (no parameter gradients, no backward below the layer), so a
Grad-CAM costs about one inference pass plus a backward through the head;
several target classes share one forward pass; maps stay raw (the ReLU-ed weighted sum,
upsampled), not min-max normalised, so the identities above can be tested. CAM keeps the
sign (no ReLU) by default, as the paper; pass `relu=True` to clip it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xai_utils.core.hooks import capture, get_layer
from xai_utils.core.inputs import model_info
from xai_utils.core.model_state import model_device
from xai_utils.core.registry import Explanation, register


def default_layer(model: nn.Module) -> str:
    """The last feature map before global pooling, by architecture.

    ResNets: `layer4`; timm EfficientNets: `bn2` (BatchNorm + activation); VGG-style nets
    with a `features` Sequential (torchvision VGG, `shapes_vgg`): its last ReLU
    (`features.29` for vgg16, `features.10` for shapes_vgg); otherwise the last module that
    outputs a spatial (B x K x h x w, h, w > 1) map during a forward pass.
    """
    if isinstance(getattr(model, "layer4", None), nn.Module):
        return "layer4"
    if type(model).__name__ == "EfficientNet" and hasattr(model, "bn2"):
        return "bn2"
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        relus = [n for n, m in features.named_children() if isinstance(m, (nn.ReLU, nn.ReLU6))]
        return f"features.{relus[-1]}" if relus else "features"
    return _last_spatial_module(model)


def _last_spatial_module(model: nn.Module) -> str:
    size = model_info(model).input_size
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if name:
            def hook(_m, _i, out, name=name):
                if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[2:]) > 1:
                    order.append(name)
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=model_device(model), dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise ValueError(f"{type(model).__name__} has no layer with a spatial output; "
                         "pass layer=... explicitly")
    return order[-1]


def stage_layers(model: nn.Module) -> list[str]:
    """Layers from early to last for a Grad-CAM-across-depth figure (ends at the default)."""
    last = default_layer(model)
    if last == "layer4":
        return ["layer1", "layer2", "layer3", "layer4"]
    if last == "bn2" and isinstance(getattr(model, "blocks", None), nn.Sequential):
        return [f"blocks.{n}" for n, _ in model.blocks.named_children()][1:] + ["bn2"]
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        kids = list(features.named_children())
        before_pool = [kids[i - 1][0] for i, (_, m) in enumerate(kids)
                       if isinstance(m, nn.MaxPool2d) and i > 0]
        names = [f"features.{n}" for n in before_pool]
        return [n for n in names if n != last] + [last]
    return [last]


def gap_linear_head(model: nn.Module) -> nn.Linear:
    """The single linear layer behind a global average pool, or a ValueError naming what is
    missing (CAM is defined only for that head)."""
    problems = []
    pool_name = next((n for n in ("global_pool", "avgpool", "pool") if hasattr(model, n)), None)
    if pool_name is None:
        problems.append("no global pooling module (looked for global_pool, avgpool, pool)")
    else:
        pool = getattr(model, pool_name)
        out = getattr(pool, "output_size", None)
        is_gap = (isinstance(pool, nn.AdaptiveAvgPool2d) and out in (1, (1, 1))) or \
            getattr(pool, "pool_type", None) == "avg"
        if not is_gap:
            problems.append(f"{pool_name} = {pool} is not a global average pool")
    head = model.get_classifier() if hasattr(model, "get_classifier") else next(
        (getattr(model, n) for n in ("fc", "classifier", "head") if hasattr(model, n)), None)
    linears = [] if head is None else [m for m in head.modules() if isinstance(m, nn.Linear)]
    if head is None:
        problems.append("no classifier module (looked for fc, classifier, head)")
    elif len(linears) != 1:
        problems.append(f"its classifier has {len(linears)} linear layers, not one")
    if problems:
        raise ValueError(f"CAM needs global average pooling followed by one linear layer; "
                         f"{type(model).__name__}: {'; '.join(problems)}. "
                         "Use Grad-CAM, which works for any head.")
    return linears[0]


def _as_targets(targets, batch: int, device) -> torch.Tensor | None:
    """None, an int, a B-long or a B x T set of class indices -> B x T LongTensor (or None)."""
    if targets is None:
        return None
    t = torch.as_tensor(targets, device=device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices, got {t.dtype}")
    t = t.long()
    t = t.expand(batch) if t.dim() == 0 else t
    t = t[:, None] if t.dim() == 1 else t
    if t.dim() != 2 or t.shape[0] != batch:
        raise ValueError(f"targets must be an int, B or B x T indices for B = {batch}, "
                         f"got shape {tuple(t.shape)}")
    return t


@contextmanager
def _autograd_from(modules: list[nn.Module]) -> Iterator[None]:
    """Inside an outer `no_grad` forward, turn autograd on from the first of `modules` that
    runs: its output becomes a fresh leaf (cloned, so later in-place ops are allowed), so no
    graph is recorded, and no backward runs, through the layers below it."""
    started = False

    def hook(_module, _inputs, output):
        nonlocal started
        if started or not isinstance(output, torch.Tensor):
            return None
        started = True
        torch.set_grad_enabled(True)  # undone when the caller's no_grad block exits
        return output.detach().requires_grad_(True).clone()

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def activations_and_gradients(model: nn.Module, x: torch.Tensor, layers: list[str],
                              targets: torch.Tensor | None = None, topk: int = 1,
                              gradients: bool = True):
    """One forward pass recording `layers`; then, per target column, the gradient of the
    summed target logits with respect to every recorded activation.

    Returns (activations {layer: B x K x h x w}, gradients {layer: B x T x K x h x w},
    logits B x C, targets B x T). `targets` None takes the `topk` classes of each image.
    """
    modules = [get_layer(model, name) for name in layers]
    cut = _autograd_from(modules) if gradients else nullcontext()
    with torch.no_grad(), cut, capture(model, layers, detach=not gradients) as rec:
        logits = model(x.detach())
    missing = [n for n in layers if n not in rec.activations]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    acts = [rec.activations[n] for n in layers]
    num_classes = logits.shape[1]
    if targets is None:
        targets = logits.detach().topk(min(topk, num_classes), dim=1).indices
    elif ((targets < 0) | (targets >= num_classes)).any():
        raise IndexError(f"target class out of range 0..{num_classes - 1}")
    grads: dict[str, torch.Tensor] = {}
    if gradients:
        scores = logits.gather(1, targets)
        per_target = [torch.autograd.grad(scores[:, t].sum(), acts,
                                          retain_graph=t < targets.shape[1] - 1)
                      for t in range(targets.shape[1])]
        grads = {n: torch.stack([g[i] for g in per_target], 1) for i, n in enumerate(layers)}
    return ({n: a.detach() for n, a in zip(layers, acts, strict=True)}, grads,
            logits.detach(), targets)


def weighted_sum(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_tk A_k: (B x K x h x w, B x T x K) -> B x T x h x w."""
    return torch.einsum("btk,bkhw->bthw", weights.to(activations.dtype), activations)


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of B x T x h x w maps to `size`."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


@dataclass
class CamResult:
    saliency: torch.Tensor  # B x T x H x W at input resolution
    lowres: torch.Tensor  # B x T x h x w at the layer's resolution
    weights: torch.Tensor  # B x T x K channel weights (negated when counterfactual)
    logits: torch.Tensor  # B x C
    targets: torch.Tensor  # B x T
    layer: str


class ChannelWeightedMap:
    """Shared work: record the layer, weight its channels, sum, optional ReLU, upsample.

    Variants override `channel_weights` (and may `verify` the raw maps).
    """

    uses_gradients = True
    relu = True

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool | None = None,
                 counterfactual: bool = False) -> None:
        self.model = model
        self.layer = layer or default_layer(model)
        get_layer(model, self.layer)
        if relu is not None:
            self.relu = relu
        self.counterfactual = counterfactual

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None,
                        targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def verify(self, raw: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Hook for variants that can check their raw maps against the logits."""

    def __call__(self, x: torch.Tensor, targets=None, topk: int = 1) -> CamResult:
        """Maps for `targets` (None: the `topk` top classes; int; B; or B x T indices)."""
        t = _as_targets(targets, x.shape[0], x.device)
        acts, grads, logits, t = activations_and_gradients(
            self.model, x, [self.layer], t, topk, gradients=self.uses_gradients)
        act = acts[self.layer]
        weights = self.channel_weights(act, grads.get(self.layer), t)
        raw = weighted_sum(act, weights)
        self.verify(raw, logits, t)
        if self.counterfactual:
            raw, weights = -raw, -weights
        low = raw.clamp_min(0) if self.relu else raw
        return CamResult(upsample(low, x.shape[-2:]), low, weights, logits, t, self.layer)


class GradCAM(ChannelWeightedMap):
    """Grad-CAM: alpha_k = spatial mean of d y_c / d A_k; ReLU on by default."""

    def channel_weights(self, acts, grads, targets):
        return grads.mean(dim=(-2, -1))


class CAM(ChannelWeightedMap):
    """CAM: w_k = row c of the final linear layer; needs a GAP + linear head and the final
    feature map. `check` verifies mean_ij CAM_c + b_c = logit_c on every call."""

    uses_gradients = False
    relu = False

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool | None = None,
                 counterfactual: bool = False, check: bool = True) -> None:
        self.fc = gap_linear_head(model)
        super().__init__(model, layer, relu, counterfactual)
        self.check = check

    def channel_weights(self, acts, grads, targets):
        if acts.shape[1] != self.fc.in_features:
            raise ValueError(f"layer {self.layer!r} has {acts.shape[1]} channels but the linear "
                             f"head reads {self.fc.in_features}: not the final feature map")
        return self.fc.weight.detach()[targets]

    def verify(self, raw, logits, targets):
        if not self.check:
            return
        bias = 0 if self.fc.bias is None else self.fc.bias.detach()[targets]
        err = (raw.mean(dim=(-2, -1)) + bias - logits.gather(1, targets)).abs().max()
        tol = torch.finfo(raw.dtype).eps ** 0.5 * logits.abs().max().clamp_min(1)
        if err > tol:
            raise ValueError(f"CAM on layer {self.layer!r} does not reproduce the logits (max "
                             f"error {float(err):.3g}): it is not the final feature map that "
                             f"the global average pool reads (default: "
                             f"{default_layer(self.model)!r}). Pass check=False to see it "
                             "anyway, or use Grad-CAM for other layers.")


def _explanation(result: CamResult) -> Explanation:
    return Explanation(result.saliency[:, 0], result.targets[:, 0], extras={
        "lowres": result.lowres[:, 0], "weights": result.weights[:, 0],
        "logits": result.logits, "layer": result.layer})


@register("gradcam")
def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None,
            relu: bool = True, counterfactual: bool = False) -> Explanation:
    """Grad-CAM on `layer` (default: the last feature map); extras carry the low-res map."""
    return _explanation(GradCAM(model, layer, relu, counterfactual)(x, target))


@register("cam", requires=("gap_linear_head",))
def cam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | None = None,
        relu: bool = False, counterfactual: bool = False, check: bool = True) -> Explanation:
    """CAM on the final feature map (GAP + linear heads only); raw signed map by default."""
    return _explanation(CAM(model, layer, relu, counterfactual, check)(x, target))


@dataclass
class LayerCache:
    """Activations and per-class gradients of several layers from ONE forward pass, so a
    slider can redraw any (layer, class) map with a weighted sum and an upsampling.

    >>> cache = LayerCache.build(model, x, stage_layers(model), topk=5)
    >>> cache.gradcam("bn2", 0)        # B x H x W, the top class;  cache.cam(1): CAM, 2nd class
    """

    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor]  # B x T x K x h x w
    logits: torch.Tensor
    targets: torch.Tensor  # B x T
    size: tuple[int, int]
    head: tuple[torch.Tensor, torch.Tensor | None] | None  # (W, b) when CAM applies
    cam_layer: str

    @classmethod
    def build(cls, model: nn.Module, x: torch.Tensor, layers: list[str] | None = None,
              targets=None, topk: int = 5) -> LayerCache:
        layers = list(layers or stage_layers(model))
        t = _as_targets(targets, x.shape[0], x.device)
        acts, grads, logits, t = activations_and_gradients(model, x, layers, t, topk)
        try:
            fc = gap_linear_head(model)
            bias = None if fc.bias is None else fc.bias.detach()
            head = (fc.weight.detach(), bias)
        except ValueError:
            head = None
        return cls(acts, grads, logits, t, tuple(x.shape[-2:]), head, default_layer(model))

    def gradcam(self, layer: str, index: int = 0, relu: bool = True,
                counterfactual: bool = False) -> torch.Tensor:
        """Grad-CAM of target column `index` on `layer`, B x H x W."""
        weights = self.gradients[layer][:, index].mean(dim=(-2, -1))
        raw = weighted_sum(self.activations[layer], weights[:, None])
        raw = -raw if counterfactual else raw
        return upsample(raw.clamp_min(0) if relu else raw, self.size)[:, 0]

    def cam(self, index: int = 0, relu: bool = False, counterfactual: bool = False
            ) -> torch.Tensor:
        """CAM of target column `index` on the final feature map, B x H x W."""
        if self.head is None or self.cam_layer not in self.activations:
            raise ValueError(f"CAM needs a GAP + linear head and the layer {self.cam_layer!r} "
                             "in the cache")
        raw = weighted_sum(self.activations[self.cam_layer],
                           self.head[0][self.targets[:, index]][:, None])
        raw = -raw if counterfactual else raw
        return upsample(raw.clamp_min(0) if relu else raw, self.size)[:, 0]
