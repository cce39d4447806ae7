"""Conservative propagation through layer normalisation and attention (Ali et al. 2022, "XAI
for Transformers: Better Explanations through Conservative Propagation", ICML, sec. 3.2).

The gradient of a transformer does not conserve relevance: LayerNorm divides by a standard
deviation that depends on its input, and attention multiplies values by softmax weights that
depend on the input too. Ali et al. hold both constant in the backward pass: LayerNorm becomes
the linear map x -> (x - mean x) / sigma (sigma fixed, "LN-rule"), attention the linear map
V -> A V (A fixed, "AH-rule"). The gradient through these linear maps is LRP-0 and conserves
relevance up to biases.

For one LRP pass `held_constant()` replaces `F.layer_norm`, `F.softmax`, `torch.softmax`,
`Tensor.softmax` and `F.scaled_dot_product_attention` by functions whose values are exactly
the originals' and whose gradients are those of the held-constant forms. Every model built on
these functions is covered without knowing its classes: torchvision's ViT
(`nn.MultiheadAttention`), Swin and ConvNeXt (`LayerNorm2d`), timm's ViT, DeiT and ConvNeXt.
The replacement is global while the pass runs (its values are unchanged, so other code sees
the same outputs; only gradients taken at the same time in another thread would differ).

`held_constant(attention="attnlrp")` keeps the LN-rule but follows AttnLRP (Achtibat et al.
2024, ICML, sec. 3) in attention: relevance also flows through the softmax and the
query-key product. In the modified-gradient form (relevance = value x gradient) AttnLRP's
softmax rule, R_in = x (R_out - s sum R_out), is the softmax's own gradient, and its uniform
rule for a product of two inputs halves the gradient of each factor. This needs attention
computed by `F.scaled_dot_product_attention`; a softmax called elsewhere (attention written
as explicit matrix products, as in torchvision's Swin) is refused, since its products would
send the full relevance down both factors.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from xai_utils.core.registry import MethodNotApplicable
from xai_utils.methods.lrp.rules import attach

Tensor = torch.Tensor
_ORIGINAL = {"layer_norm": F.layer_norm, "softmax": F.softmax,
             "attention": F.scaled_dot_product_attention, "torch_softmax": torch.softmax,
             "tensor_softmax": torch.Tensor.softmax}


def layer_norm(input: Tensor, normalized_shape, weight=None, bias=None, eps: float = 1e-5
               ) -> Tensor:
    """`F.layer_norm` whose gradient holds the standard deviation constant (LN-rule)."""
    value = _ORIGINAL["layer_norm"](input, normalized_shape, weight, bias, eps)
    dims = tuple(range(-len(normalized_shape), 0))
    sigma = torch.sqrt(input.var(dims, unbiased=False, keepdim=True) + eps)
    carrier = (input - input.mean(dims, keepdim=True)) / sigma.detach()
    if weight is not None:
        carrier = carrier * weight.detach()
    return attach(value, carrier)


def softmax(input: Tensor, dim=None, _stacklevel: int = 3, dtype=None) -> Tensor:
    """`F.softmax` held constant: no gradient reaches its input."""
    return _ORIGINAL["softmax"](input, dim, _stacklevel, dtype).detach()


def torch_softmax(input: Tensor, dim, dtype=None) -> Tensor:
    return _ORIGINAL["torch_softmax"](input, dim, dtype=dtype).detach()


def tensor_softmax(self: Tensor, dim, dtype=None) -> Tensor:
    return _ORIGINAL["tensor_softmax"](self, dim, dtype=dtype).detach()


def attention_weights(query: Tensor, key: Tensor, attn_mask=None, is_causal: bool = False,
                      scale: float | None = None) -> Tensor:
    """softmax(Q K^T scale + mask), the weights `F.scaled_dot_product_attention` applies."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = query @ key.transpose(-2, -1) * scale
    if is_causal:
        causal = torch.ones(logits.shape[-2:], dtype=torch.bool, device=logits.device).tril()
        logits = logits.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        logits = (logits.masked_fill(~attn_mask, float("-inf"))
                  if attn_mask.dtype == torch.bool else logits + attn_mask)
    return _ORIGINAL["tensor_softmax"](logits, -1)  # the method: F.softmax calls it


def _attention(query: Tensor, key: Tensor, value: Tensor, attn_mask, dropout_p: float,
               is_causal: bool, scale: float | None, enable_gqa: bool, carrier) -> Tensor:
    """The fused attention's value with the gradient of `carrier(query, key, value)`
    (keys and values repeated per query head where grouped)."""
    kwargs = {"enable_gqa": True} if enable_gqa else {}
    out = _ORIGINAL["attention"](query, key, value, attn_mask, dropout_p, is_causal,
                                 scale=scale, **kwargs)
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = (t.repeat_interleave(repeat, dim=-3) for t in (key, value))
    return attach(out, carrier(query, key, value))


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False
                                 ) -> Tensor:
    """`F.scaled_dot_product_attention` whose gradient holds the weights constant (AH-rule):
    relevance flows to the values only."""
    def held(q, k, v):
        return attention_weights(q, k, attn_mask, is_causal, scale).detach() @ v
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      held)


def _half(t: Tensor) -> Tensor:
    """The value of `t` with half its gradient: AttnLRP's uniform rule for one factor of a
    product of two inputs (each factor gets half the product's relevance)."""
    return 0.5 * t + 0.5 * t.detach()


def attnlrp_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask=None,
                      dropout_p: float = 0.0, is_causal: bool = False,
                      scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """`F.scaled_dot_product_attention` with AttnLRP's gradient: the uniform rule on
    Q K^T and on A V, the softmax's own gradient in between."""
    def uniform(q, k, v):
        weights = attention_weights(_half(q), _half(k), attn_mask, is_causal, scale)
        return _half(weights) @ _half(v)
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                      uniform)


def _refused_softmax(*args, **kwargs) -> Tensor:
    raise MethodNotApplicable(
        "LRP with attention='attnlrp' needs attention through F.scaled_dot_product_attention; "
        "this model calls a softmax itself (attention as explicit matrix products, whose "
        "factors would each get the full relevance); use attention='conservative'")


ATTENTION_RULES = ("conservative", "attnlrp")


@contextmanager
def held_constant(attention: str = "conservative"):
    """Within the block, LayerNorm's normaliser gets no gradient, and attention follows
    `attention`: "conservative" (Ali et al.: the weights get no gradient) or "attnlrp"
    (Achtibat et al.: see the module docstring)."""
    if attention not in ATTENTION_RULES:
        raise ValueError(f"attention must be one of {ATTENTION_RULES}, got {attention!r}")
    saved_method = vars(torch.Tensor).get("softmax")
    F.layer_norm = layer_norm
    if attention == "conservative":
        F.softmax, F.scaled_dot_product_attention = softmax, scaled_dot_product_attention
        torch.softmax, torch.Tensor.softmax = torch_softmax, tensor_softmax
    else:
        F.softmax, F.scaled_dot_product_attention = _refused_softmax, attnlrp_attention
        torch.softmax = torch.Tensor.softmax = _refused_softmax
    try:
        yield
    finally:
        F.layer_norm, F.softmax = _ORIGINAL["layer_norm"], _ORIGINAL["softmax"]
        F.scaled_dot_product_attention = _ORIGINAL["attention"]
        torch.softmax = _ORIGINAL["torch_softmax"]
        if saved_method is None:
            del torch.Tensor.softmax
        else:
            torch.Tensor.softmax = saved_method
