"""LRP rules as forward hooks in the "modified gradient" form.

Layer-wise relevance propagation (Bach et al. 2015, PLoS ONE 10(7):e0130140; rules as in
Montavon et al. 2019, "Layer-wise relevance propagation: an overview", LNCS 11700) sends the
relevance R_k of each output z_k of a layer back to its inputs x_j by

    R_j = sum_k  c_jk / sum_j' c_j'k  * R_k                                   (overview eq. 1)

with c_jk the contribution of x_j to z_k under the rule (x_j w_jk for epsilon, (x_j w_jk)^+
for z+, ...). Here every tensor t carries its relevance as R_t = t * g_t, g_t the "gradient"
autograd computes. A rule hook returns the layer's true output z, but with a graph whose
gradient is the rule's redistribution: out = z + (carrier - carrier.detach()), where carrier =
sum_r C_r(x) * coef_r, C_r the rule's modified forward (its Jacobian holds c_jk / x_j) and
coef_r = z / C_r(x) (constant). Then g_x = sum_r J_r^T (g_z * z / C_r) and x * g_x is exactly
the rule above with R_k = z_k g_k. Plain autograd then already gives the z-rule (proportional
split) for sums, average pooling and residual additions, winner-take-all for max-pooling, and
pass-through for ReLU.

Biases: with `bias=True` a rule's denominator contains the bias as one more contribution
(as in the papers and in Zennit), so the bias absorbs its share of relevance; with
`bias=False` the bias is left out and the layer passes on all of R_k. z+ and alpha-beta leave
it out by default (the thesis: "biases ignored"); epsilon and gamma keep it by default, since
leaving it out of a mixed-sign denominator makes it unstable when z_k - b_k is near zero.
Stabilisers add eps * sign(z) (sign(0) = +1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Tensor = torch.Tensor


def stabilize(z: Tensor, eps: float) -> Tensor:
    """z + eps * sign(z), with sign(0) taken as +1 (the sign bit of z: -0.0 gives -eps, which
    only occurs where every contribution is zero, so no relevance depends on it); the result
    is never zero."""
    return z + torch.copysign(z.new_tensor(eps), z)


def layer_forward(module: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    """`module`'s own forward (padding, stride, groups, 'same' padding...) with `weight` and
    no bias; hooks are not called because `forward` is used, not `__call__`."""
    params = module._parameters
    saved = params["weight"], params.get("bias")
    params["weight"] = weight
    if "bias" in params:
        params["bias"] = None
    try:
        return module.forward(x)
    finally:
        params["weight"] = saved[0]
        if "bias" in params:
            params["bias"] = saved[1]


class _Attach(torch.autograd.Function):
    """Forward: a copy of z (the next layer may work in place); backward: the whole
    gradient goes to the carrier."""

    @staticmethod
    def forward(ctx, z, carrier):
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, grad


def attach(z: Tensor, carrier: Tensor) -> Tensor:
    """The value of z with the gradient of carrier (one copy on the forward pass)."""
    return _Attach.apply(z.detach(), carrier)


def _bias_shaped(module: nn.Module, z: Tensor) -> Tensor | None:
    bias = getattr(module, "bias", None)
    if bias is None:
        return None
    return bias.detach().view(1, -1, *([1] * (z.dim() - 2))).to(z)


class Rule:
    """A rule for one layer: `__call__(module, x, z, ctx)` returns the layer's new output."""

    name = "rule"
    pixel_only = False  # rules that need the probe of the input layer (flat, w^2, z^B)

    def __call__(self, module: nn.Module, x: Tensor, z: Tensor, ctx) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


@dataclass(repr=False)
class Epsilon(Rule):
    """LRP-epsilon (Bach et al. 2015, eq. 58): c_jk = x_j w_jk, denominator z_k + eps sign(z_k).
    `epsilon` -> 0 gives LRP-0 (gradient x input)."""

    epsilon: float = 1e-6
    bias: bool = True
    name = "epsilon"

    def __call__(self, module, x, z, ctx):
        b = None if self.bias else _bias_shaped(module, z)
        zb = z.detach() if b is None else z.detach() - b
        return attach(z, z * (z.detach() / stabilize(zb, self.epsilon)))


def _split(module: nn.Module, x: Tensor, w_for_pos: Tensor, w_for_neg: Tensor) -> Tensor:
    """f(x+, w_for_pos) + f(x-, w_for_neg); the second term only when x has negatives."""
    out = layer_forward(module, x.clamp(min=0), w_for_pos)
    if bool(x.detach().amin() < 0):
        out = out + layer_forward(module, x.clamp(max=0), w_for_neg)
    return out


@dataclass(repr=False)
class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015, eq. 60): alpha * (x w)^+ / sum (x w)^+ minus
    beta * (x w)^- / sum (x w)^-, with alpha - beta = 1. Negative inputs are split as in
    the generalised form: (x w)^+ = x^+ w^+ + x^- w^-."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    bias: bool = False
    name = "alpha_beta"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, "
                             f"got alpha={self.alpha}, beta={self.beta}")

    def __call__(self, module, x, z, ctx):
        w = module.weight.detach()
        pos = _split(module, x, w.clamp(min=0), w.clamp(max=0))
        b = _bias_shaped(module, z)
        pos_value = pos.detach()
        if self.bias and b is not None:
            pos_value = pos_value + b.clamp(min=0)
        carrier = pos * (self.alpha * z.detach() / stabilize(pos_value, self.stabilizer))
        if self.beta:
            # the negative part computed on its own, not as z - pos: that difference of two
            # large numbers loses float32 precision exactly where the negative part is small
            neg = _split(module, x, w.clamp(max=0), w.clamp(min=0))
            neg_value = neg.detach()
            if self.bias and b is not None:
                neg_value = neg_value + b.clamp(max=0)
            carrier = carrier - neg * (self.beta * z.detach() /
                                       stabilize(neg_value, self.stabilizer))
        return attach(z, carrier)


@dataclass(repr=False)
class ZPlus(Rule):
    """LRP-z+ (Montavon et al. 2017, deep Taylor): c_jk = (x_j w_jk)^+ (= alpha1-beta0)."""

    stabilizer: float = 1e-6
    bias: bool = False
    name = "zplus"

    def __call__(self, module, x, z, ctx):
        w = module.weight.detach()
        pos = _split(module, x, w.clamp(min=0), w.clamp(max=0))
        pos_value, b = pos.detach(), _bias_shaped(module, z)
        if self.bias and b is not None:
            pos_value = pos_value + b.clamp(min=0)
        return attach(z, pos * (z.detach() / stabilize(pos_value, self.stabilizer)))


@dataclass(repr=False)
class Gamma(Rule):
    """LRP-gamma (Montavon et al. 2019, eq. 4.4): c_jk = x_j (w_jk + gamma w_jk^+) for
    outputs z_k > 0; generalised to negative inputs and outputs (Andeol et al. 2021): for
    z_k < 0 the negative parts are favoured, w + gamma w^-."""

    gamma: float = 0.25
    stabilizer: float = 1e-6
    bias: bool = True
    name = "gamma"

    def __call__(self, module, x, z, ctx):
        w = module.weight.detach()
        up, down = w + self.gamma * w.clamp(min=0), w + self.gamma * w.clamp(max=0)
        pos = _split(module, x, up, down)
        neg = _split(module, x, down, up)
        zd, pos_value, neg_value = z.detach(), pos.detach(), neg.detach()
        b = _bias_shaped(module, z)
        if self.bias and b is not None:
            pos_value = pos_value + b + self.gamma * b.clamp(min=0)
            neg_value = neg_value + b + self.gamma * b.clamp(max=0)
        coef_pos = torch.where(zd > 0, zd / stabilize(pos_value, self.stabilizer), 0.0)
        coef_neg = torch.where(zd < 0, zd / stabilize(neg_value, self.stabilizer), 0.0)
        return attach(z, pos * coef_pos + neg * coef_neg)


class _PixelRule(Rule):
    """Rules of the input layer: their relevance is not x * gradient, so they build their
    carrier on the probe p (the model input is x * p with p = 1; relevance = d out / d p)."""

    pixel_only = True

    def _probe(self, x: Tensor, ctx) -> Tensor:
        if ctx is not None and x is ctx.model_input:
            return ctx.probe
        if ctx is not None and getattr(x, "_xai_pixels", None) is not None:
            return x._xai_pixels(ctx.probe)  # tiles of the input (`mark_pixels`)
        raise RuntimeError(f"the {self.name} rule applies only to the layer that receives "
                           "the model's input")


@dataclass(repr=False)
class Flat(_PixelRule):
    """LRP-flat (Lapuschkin et al. 2019): c_jk = 1 for every input in z_k's receptive field."""

    stabilizer: float = 1e-6
    name = "flat"

    def __call__(self, module, x, z, ctx):
        p = self._probe(x, ctx)
        carrier = layer_forward(module, p, torch.ones_like(module.weight))
        return attach(z, carrier * (z.detach() / stabilize(carrier.detach(), self.stabilizer)))


@dataclass(repr=False)
class WSquare(_PixelRule):
    """LRP-w^2 (Montavon et al. 2017): c_jk = w_jk^2."""

    stabilizer: float = 1e-6
    name = "wsquare"

    def __call__(self, module, x, z, ctx):
        p = self._probe(x, ctx)
        carrier = layer_forward(module, p, module.weight.detach() ** 2)
        return attach(z, carrier * (z.detach() / stabilize(carrier.detach(), self.stabilizer)))


@dataclass(repr=False)
class ZBox(_PixelRule):
    """LRP-z^B (Montavon et al. 2017, eq. 13): c_jk = x_j w_jk - l_j w_jk^+ - h_j w_jk^-,
    with l, h the lowest and highest values an input can take (per channel)."""

    low: Tensor | float = 0.0
    high: Tensor | float = 1.0
    stabilizer: float = 1e-6
    name = "zbox"

    def __call__(self, module, x, z, ctx):
        p = self._probe(x, ctx)
        w = module.weight.detach()
        low = torch.as_tensor(self.low).to(x).expand_as(x)
        high = torch.as_tensor(self.high).to(x).expand_as(x)
        carrier = (layer_forward(module, x, w) - layer_forward(module, low * p, w.clamp(min=0))
                   - layer_forward(module, high * p, w.clamp(max=0)))
        return attach(z, carrier * (z.detach() / stabilize(carrier.detach(), self.stabilizer)))


class _PassThrough(torch.autograd.Function):
    """Forward: a copy of the activation's output a; backward: g_in = g_out * a / x (0 where
    x = 0)."""

    @staticmethod
    def forward(ctx, x, a):
        ctx.save_for_backward(x, a)
        return a.clone()

    @staticmethod
    def backward(ctx, grad):
        x, a = ctx.saved_tensors
        return torch.where(x == 0, 0.0, grad * a / x), None


class Pass(Rule):
    """Element-wise activations (ReLU6, SiLU, ...): relevance passes unchanged, R_in = R_out.
    In gradient form g_in = g_out * a / x."""

    name = "pass"

    def __call__(self, module, x, z, ctx):
        return _PassThrough.apply(x, z.detach())


@dataclass(repr=False)
class AffineEpsilon(Rule):
    """A BatchNorm that follows no convolution (DenseNet normalises a concatenation) read as
    the element-wise affine map y = s x + t with the epsilon rule: R_x = s x / (y + eps sign y)
    R_y, the shift t taking its share as a bias does (Montavon et al. 2019, sec. 10.2)."""

    epsilon: float = 1e-6
    name = "affine_epsilon"

    def __call__(self, module, x, z, ctx):
        if module.running_var is None:
            raise ValueError(f"{type(module).__name__} without running statistics has no "
                             "fixed affine map for LRP")
        scale = torch.rsqrt(module.running_var + module.eps)
        if module.weight is not None:
            scale = scale * module.weight
        scale = scale.detach().view(1, -1, *([1] * (x.dim() - 2))).to(x)
        return attach(z, x * scale * (z.detach() / stabilize(z.detach(), self.epsilon)))


class Gate(Rule):
    """A multiplicative gate y = x * g(x) (squeeze-and-excitation) held constant: all of R_y
    goes to x, none through the gate branch ("signal-take-all", Arras et al. 2017, "Explaining
    recurrent neural network predictions in sentiment analysis", WASSA). The plain gradient
    would count the relevance twice (once per factor)."""

    name = "gate"

    def __call__(self, module, x, z, ctx):
        gate = torch.where(x == 0, 0.0, z.detach() / x.detach())
        return attach(z, x * gate)


class ProportionalMaxPool(Rule):
    """Max-pooling read as sum-pooling (heatmapping.org tutorial): R_i = x_i / sum_pool x R_j."""

    name = "maxpool_proportional"

    def __call__(self, module, x, z, ctx):
        if x.dim() != 4 or module.dilation not in (1, (1, 1)):
            raise ValueError("proportional max-pooling supports 2-D pooling without dilation")
        pooled = nn.functional.avg_pool2d(x, module.kernel_size, module.stride, module.padding,
                                          module.ceil_mode, count_include_pad=True)
        return attach(z, pooled * (z.detach() / stabilize(pooled.detach(), 1e-12)))
