"""Layer-wise relevance propagation (Bach et al. 2015, PLoS ONE 10(7):e0130140), as used by
the thesis "Deep Introspection" (ch. 3.3.1) to find the relevant pixels of a decision.

    expl = xu.explain("lrp", model, x, target)                       # epsilon_gamma_box
    expl = xu.explain("lrp", model, x, target, composite="thesis")   # the thesis's rules
    expl.saliency              # B x H x W: relevance summed over colour channels
    expl.extras["relevance"]   # B x C x H x W input relevance
    expl.extras["logit"]       # B: the explained logit (= the relevance's sum when conserved)
    xu.explain("lrp", model, x, target, contrast="clrp")   # or "sglrp": class-contrastive
    xu.explain("lrp", vit, x, target, attention="attnlrp")  # AttnLRP's attention rules

Rules (rules.py) are forward hooks in the modified-gradient form; composites
(composites.py) say which rule each layer type gets; `canonized` (core/model_state.py) merges
BatchNorm into the layer before it; LayerNorm and attention are held constant in the
backward pass (conservative.py, Ali et al. 2022), squeeze-and-excitation gates too.
Relevance at the output is the target logit itself (Bach et al.: R = f(x)), so with
conservative rules the input relevance sums to the logit. `contrast` starts from another
output relevance: "clrp" subtracts the relevance of the dual class, the other classes
sharing the target's score (CLRP, Gu, Yang & Tresp 2018, ACCV), "sglrp" starts from the
gradient of the target's softmax probability, positive for the target and negative for the
others in proportion to their probability (SGLRP, Iwana, Kuroki & Uchida 2019, ICCVW).
A layer type that no rule covers raises an error naming it before anything runs.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from xai_utils.core.model_state import BATCHNORM, PASS_THROUGH, MergedBatchNorm, canonized
from xai_utils.core.registry import Explanation, MethodNotApplicable, register
from xai_utils.methods.lrp.composites import COMPOSITES, Composite, get_composite, input_bounds
from xai_utils.methods.lrp.conservative import held_constant
from xai_utils.methods.lrp.rules import Gate, Pass

__all__ = ["COMPOSITES", "CONTRASTS", "CONTRAST_COMPOSITE", "Composite", "NoRule", "attribute",
           "canonized", "get_composite", "input_bounds", "lrp", "mark_pixels",
           "output_relevance"]

# element-wise activations that get the pass-through rule (ReLU's own gradient already is)
ACTIVATIONS = (nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Tanh,
               nn.Sigmoid, nn.Softplus, nn.Hardswish, nn.Mish)
# layers whose plain gradient is already the right LRP rule (see rules.py)
GRADIENT_OK = (*PASS_THROUGH, nn.ReLU, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.MaxPool1d,
               nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)




# output relevances besides the target logit (see the module docstring)
CONTRASTS = ("clrp", "sglrp")
# the default composite: the best-practice one that localises best on GridPG (see `lrp`)
DEFAULT_COMPOSITE = "epsilon_gamma_box"
# the default with a `contrast`: the rules of Gu et al. and Iwana et al. (see composites.py)
CONTRAST_COMPOSITE = "zplus_box"
# modules that multiply their input by a gate computed from it (squeeze-and-excitation)
GATES = ("SqueezeExcitation", "SqueezeExcite", "SEModule", "EffectiveSEModule")
# constant per-channel scales (ConvNeXt, CaiT): the gradient is the right rule
SCALES = ("LayerScale", "LayerScale2d")


def _identity_like(module: nn.Module) -> bool:
    """Stochastic depth in eval mode (the identity) and pure reorderings (Permute)."""
    kind = type(module).__name__
    return kind == "Permute" or (kind in ("StochasticDepth", "DropPath") and not module.training)


class NoRule(MethodNotApplicable, TypeError):
    """A layer type that no LRP rule covers (raised before any forward pass)."""


@dataclass
class _Context:
    model_input: torch.Tensor
    probe: torch.Tensor
    pixel_hits: int = 0


def _no_rule(name: str, module: nn.Module) -> NoRule:
    return NoRule(f"LRP has no rule for layer {name!r} ({type(module).__name__}); rules cover "
                  "Conv/Linear, BatchNorm, LayerNorm, attention, pooling, dropout, flatten, "
                  "squeeze-and-excitation gates and element-wise activations")


def _plan(model: nn.Module, comp: Composite) -> list[tuple[nn.Module, object]]:
    """(module, rule) for every layer that needs a hook; a clear error for uncovered ones.
    LayerNorm and attention need none: `held_constant` covers them (conservative.py)."""
    plan, gated = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in gated):
            continue  # inside a gate held constant: no relevance flows there
        rule = comp.rule_for(module)
        if rule is not None:
            plan.append((module, rule))
        elif type(module).__name__ in GATES:
            plan.append((module, Gate()))
            gated.append(name + ".")
        elif isinstance(module, BATCHNORM):
            if module.running_var is None:
                raise _no_rule(name, module)
            plan.append((module, comp.affine))
        elif isinstance(module, ACTIVATIONS) or type(module).__module__.startswith(
                "timm.layers.activations"):
            plan.append((module, Pass()))
        elif (any(True for _ in module.children()) or isinstance(module, GRADIENT_OK)
              or isinstance(module, (MergedBatchNorm, nn.LayerNorm))
              or type(module).__name__ in SCALES or _identity_like(module)):
            continue
        else:
            raise _no_rule(name, module)
    return plan


def mark_pixels(t: torch.Tensor, rearrange) -> torch.Tensor:
    """Tag `t = rearrange(model input)` (a wrapper's tiles or crops, same channels) so that
    the layer receiving it gets the pixel-layer rule, as the model's input would; the rule
    rearranges its probe with the same function."""
    t._xai_pixels = rearrange
    return t


def _hook(rule, comp: Composite, ctx: _Context):
    def hook(module, inputs, output):
        x = inputs[0]
        if comp.pixel is not None and (x is ctx.model_input
                                       or getattr(x, "_xai_pixels", None) is not None):
            ctx.pixel_hits += 1
            return comp.pixel(module, x, output, ctx)
        return rule(module, x, output, ctx)
    return hook


def output_relevance(logits: torch.Tensor, target: torch.Tensor,
                     contrast: str | None = None) -> list[torch.Tensor]:
    """The relevance at the output (B x K each) that LRP propagates: the target logit
    (Bach et al.), or for "clrp" that and the dual class's (the target's score shared evenly
    by the other classes, Gu et al.'s CLRP1), or for "sglrp" the softmax gradient
    d p_t / d z_k = p_t (1[k = t] - p_k) (Iwana et al.)."""
    z = logits.detach()
    own = torch.zeros_like(z).scatter_(1, target[:, None], z.gather(1, target[:, None]))
    if contrast is None:
        return [own]
    if contrast == "clrp":
        dual = (own.sum(1, keepdim=True) / (z.shape[1] - 1)).expand_as(z).clone()
        return [own, dual.scatter_(1, target[:, None], 0.0)]
    if contrast == "sglrp":  # (softmax from exp: the function may be patched in an LRP pass)
        p = (z - z.logsumexp(1, keepdim=True)).exp()
        p_t = p.gather(1, target[:, None])
        return [p_t * (torch.zeros_like(p).scatter_(1, target[:, None], 1.0) - p)]
    raise ValueError(f"unknown contrast {contrast!r}; use None or one of {CONTRASTS}")


def _seed(relevance: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The backward seed that starts `relevance` at the output: the rules propagate
    z_k * seed_k as output k's relevance (the modified-gradient form), so seed = R / z."""
    z = logits.detach()
    tiny = torch.finfo(z.dtype).tiny
    safe = torch.where(z.abs() > tiny, z, torch.full_like(z, tiny))
    return torch.where(relevance == 0, torch.zeros_like(z), relevance / safe)


def _composite_for(composite: str | Composite | None, contrast: str | None):
    """The composite asked for, or the default for plain LRP or for a contrast."""
    if composite is not None:
        return composite
    return DEFAULT_COMPOSITE if contrast is None else CONTRAST_COMPOSITE


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
              composite: str | Composite | None = None, canonize: bool = True,
              contrast: str | None = None, attention: str = "conservative",
              **params) -> tuple[torch.Tensor, torch.Tensor]:
    """Input relevance (B x C x H x W) and explained logits (B) for `target` (B-long).

    `composite`: None is `DEFAULT_COMPOSITE`, or `CONTRAST_COMPOSITE` with a `contrast`.
    `contrast`: None, "clrp" (the target's relevance minus the dual class's) or "sglrp"
    (see `output_relevance`). `attention`: "conservative" (Ali et al. 2022) or "attnlrp"
    (Achtibat et al. 2024; conservative.py). `params` go to `get_composite` (epsilon, gamma,
    alpha, beta, stabilizer, bounds, maxpool).
    """
    if contrast is not None and contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}; use None or one of {CONTRASTS}")
    comp = get_composite(_composite_for(composite, contrast), model, batch=x, **params)
    handles = []
    with (torch.enable_grad(), canonized(model, ACTIVATIONS) if canonize else nullcontext(),
          held_constant(attention)):
        try:
            plan = _plan(model, comp)
            probe = torch.ones_like(x, requires_grad=True)
            ctx = _Context(x.detach() * probe, probe)
            for module, rule in plan:
                handles.append(module.register_forward_hook(_hook(rule, comp, ctx)))
            out = model(ctx.model_input)
            if comp.pixel is not None and ctx.pixel_hits == 0:
                raise RuntimeError(f"composite {comp.name!r} has a pixel-layer rule but no "
                                   "convolution or linear layer received the model's input")
            if contrast is None:  # R = the target logit: the seed is one-hot
                seed = torch.zeros_like(out).scatter_(1, target[:, None], 1.0)
                (relevance,) = torch.autograd.grad(out, probe, grad_outputs=seed)
            else:  # LRP is linear in the output relevance: CLRP's difference in one pass
                starts = output_relevance(out, target, contrast)
                signed = starts[0] - starts[1] if len(starts) == 2 else starts[0]
                (relevance,) = torch.autograd.grad(out, probe, grad_outputs=_seed(signed, out))
        finally:
            for handle in handles:
                handle.remove()
    return relevance.detach(), out.detach().gather(1, target[:, None])[:, 0]


@register("lrp")
def lrp(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
        composite: str | Composite | None = None, canonize: bool = True,
        contrast: str | None = None, attention: str = "conservative",
        **params) -> Explanation:
    """LRP heatmaps for a batch. `composite`: one of `COMPOSITES` or a `Composite`.

    The default, `epsilon_gamma_box` (Kohlbrenner et al. 2020's best practice: gamma on
    convolutions, epsilon on dense layers, z^B at the pixels), is the best-practice composite
    that localises best on the grid pointing game (`benchmarks/gridpg.py`); `thesis` (alpha 2,
    beta 1 everywhere, z^B at the pixels) is the one notebook 06 reproduces. `contrast`:
    "clrp" gives max(0, R - R_dual) summed over colours (Gu et al.), "sglrp" the relevance
    of the softmax gradient (Iwana et al.; see `output_relevance`); both default to the
    papers' rules (`zplus_box`)."""
    composite = _composite_for(composite, contrast)
    relevance, logit = attribute(model, x, target, composite, canonize, contrast, attention,
                                 **params)
    name = composite if isinstance(composite, str) else composite.name
    saliency = relevance.sum(1)
    if contrast == "clrp":
        saliency = saliency.clamp_min(0)
    return Explanation(saliency, target, extras={"relevance": relevance, "logit": logit,
                                                 "composite": name, "contrast": contrast})
