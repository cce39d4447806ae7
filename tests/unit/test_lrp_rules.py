"""Each LRP rule against an explicit matrix-form computation: z_jk = x_j w_jk written out for
a Linear layer and for a Conv2d unfolded into patches, R_j = sum_k c_jk / sum_j c_jk R_k."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from xai_utils.methods.lrp import _Context
from xai_utils.methods.lrp.rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Pass,
    ProportionalMaxPool,
    WSquare,
    ZBox,
    ZPlus,
)

LOW, HIGH = -2.5, 3.0


def ours(rule, layer, x, relevance_out):
    """Input relevance from the hook: seed the output gradient with R / z (R_k = z_k g_k)."""
    probe = torch.ones_like(x, requires_grad=True)
    ctx = _Context(x * probe, probe)
    z = layer(ctx.model_input)
    out = rule(layer, ctx.model_input, z, ctx)
    torch.testing.assert_close(out, z, rtol=0, atol=1e-12)  # the forward value is unchanged
    (grad,) = torch.autograd.grad(out, probe, grad_outputs=relevance_out / z.detach())
    return grad


def contributions(name, x, w, b, z, bias, gamma=0.25):
    """c[b, j, k, l] (numerators) and d[b, k, l] (denominators) for x: B x J x L, w: K x J."""
    xp, xn = x.clamp(min=0)[:, :, None], x.clamp(max=0)[:, :, None]
    wt = w.t()[None, :, :, None]
    wp, wn = wt.clamp(min=0), wt.clamp(max=0)
    bb = b[None, :, None] if bias else torch.zeros_like(b)[None, :, None]
    if name == "epsilon":
        c = x[:, :, None] * wt
        return [(c, c.sum(1) + bb, 1.0)]
    if name in ("zplus", "alpha1beta0", "alpha2beta1"):
        alpha, beta = (2.0, 1.0) if name == "alpha2beta1" else (1.0, 0.0)
        cp, cn = xp * wp + xn * wn, xp * wn + xn * wp
        return [(cp, cp.sum(1) + bb.clamp(min=0), alpha),
                (cn, cn.sum(1) + bb.clamp(max=0), -beta)]
    if name == "gamma":
        up, down = wt + gamma * wp, wt + gamma * wn
        cp, cn = xp * up + xn * down, xp * down + xn * up
        dp = cp.sum(1) + bb + gamma * bb.clamp(min=0)
        dn = cn.sum(1) + bb + gamma * bb.clamp(max=0)
        return [(cp * (z > 0)[:, None], dp, 1.0), (cn * (z < 0)[:, None], dn, 1.0)]
    raise AssertionError(name)


def reference(name, x, w, b, z, relevance_out, bias, stab=1e-12):
    """R_in[b, j, l] = sum_k sum_terms coef * c_jk / d_k * R_k."""
    total = torch.zeros_like(x)
    for c, d, coef in contributions(name, x, w, b, z, bias):
        d = d + stab * torch.where(d >= 0, 1.0, -1.0)
        total = total + coef * (c / d[:, None] * relevance_out[:, None]).sum(2)
    return total


RULES = {
    "epsilon": lambda bias: Epsilon(1e-12, bias=bias),
    "zplus": lambda bias: ZPlus(1e-12, bias=bias),
    "alpha1beta0": lambda bias: AlphaBeta(1, 0, 1e-12, bias=bias),
    "alpha2beta1": lambda bias: AlphaBeta(2, 1, 1e-12, bias=bias),
    "gamma": lambda bias: Gamma(0.25, 1e-12, bias=bias),
}


def _linear_case(seed, nonneg):
    torch.manual_seed(seed)
    layer = nn.Linear(7, 5).double()
    x = torch.randn(3, 7, dtype=torch.float64)
    return layer, x.abs() if nonneg else x


def _conv_case(seed, nonneg):
    torch.manual_seed(seed)
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    return layer, x.abs() if nonneg else x


def _as_matrix(layer, x):
    """(patches B x J x L, weight K x J, fold back)."""
    if isinstance(layer, nn.Linear):
        return x[:, :, None], layer.weight.detach(), lambda r: r[:, :, 0]
    kw = dict(kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding)
    patches = F.unfold(x, **kw)
    return (patches, layer.weight.detach().flatten(1),
            lambda r: F.fold(r, x.shape[-2:], **kw))


@pytest.mark.parametrize("case", [_linear_case, _conv_case], ids=["linear", "conv"])
@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("nonneg", [False, True], ids=["mixed", "nonneg"])
def test_rule_matches_matrix_form(case, name, bias, nonneg):
    layer, x = case(0, nonneg)
    z = layer(x).detach()
    relevance_out = torch.randn_like(z)
    patches, w, fold = _as_matrix(layer, x)
    zf = z if z.dim() == 2 else z.flatten(2)
    zf = zf[:, :, None] if zf.dim() == 2 else zf
    rf = relevance_out[:, :, None] if relevance_out.dim() == 2 else relevance_out.flatten(2)
    expected = fold(reference(name, patches, w, layer.bias.detach(), zf, rf, bias))
    got = ours(RULES[name](bias), layer, x, relevance_out)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_epsilon_with_large_epsilon_absorbs_relevance():
    layer, x = _linear_case(1, False)
    z = layer(x).detach()
    relevance_out = torch.randn_like(z)
    c = x[:, :, None] * layer.weight.detach().t()[None]
    d = c.sum(1) + layer.bias.detach()
    d = d + 0.5 * torch.where(d >= 0, 1.0, -1.0)
    expected = (c / d[:, None] * relevance_out[:, None]).sum(2)
    got = ours(Epsilon(0.5), layer, x, relevance_out)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", [_linear_case, _conv_case], ids=["linear", "conv"])
@pytest.mark.parametrize("name", ["flat", "wsquare", "zbox"])
def test_pixel_rules_match_matrix_form(case, name):
    layer, x = case(2, False)
    x = x.clamp(LOW, HIGH)
    z = layer(x).detach()
    relevance_out = torch.randn_like(z)
    patches, w, fold = _as_matrix(layer, x)
    inside, _, _ = _as_matrix(layer, torch.ones_like(x))  # 1 inside the image, 0 in padding
    if name == "flat":
        c = inside[:, :, None] * torch.ones_like(w).t()[None, :, :, None]
        rule = Flat(1e-12)
    elif name == "wsquare":
        c = inside[:, :, None] * (w ** 2).t()[None, :, :, None]
        rule = WSquare(1e-12)
    else:
        wt = w.t()[None, :, :, None]
        c = (patches[:, :, None] * wt - LOW * inside[:, :, None] * wt.clamp(min=0)
             - HIGH * inside[:, :, None] * wt.clamp(max=0))
        rule = ZBox(LOW, HIGH, 1e-12)
    rf = relevance_out[:, :, None] if relevance_out.dim() == 2 else relevance_out.flatten(2)
    expected = fold((c / c.sum(1, keepdim=True) * rf[:, None]).sum(2))
    torch.testing.assert_close(ours(rule, layer, x, relevance_out), expected,
                               rtol=1e-9, atol=1e-9)


def test_zbox_contributions_are_nonnegative_inside_the_box():
    """x w - l w+ - h w- = (x - l) w+ + (x - h) w- >= 0 for l <= x <= h."""
    layer, x = _conv_case(3, False)
    x = x.clamp(LOW, HIGH)
    z = layer(x).detach()
    got = ours(ZBox(LOW, HIGH, 1e-12), layer, x, z.abs() + 0.1)
    assert (got >= -1e-12).all()


def test_pixel_rule_refuses_a_hidden_layer():
    layer, x = _linear_case(4, False)
    ctx = _Context(torch.zeros(1), torch.zeros(1))
    with pytest.raises(RuntimeError, match="model's input"):
        Flat()(layer, x, layer(x), ctx)


def test_pass_rule_keeps_relevance_through_relu6():
    x = torch.tensor([[-1.0, 0.0, 2.0, 9.0]], dtype=torch.float64, requires_grad=True)
    act = nn.ReLU6()
    a = act(x)
    out = Pass()(act, x, a, None)
    relevance_out = torch.tensor([[0.0, 0.0, 3.0, 5.0]], dtype=torch.float64)
    (g,) = torch.autograd.grad(out, x, grad_outputs=relevance_out / a.detach().clamp(min=1e-9))
    torch.testing.assert_close(x.detach() * g, relevance_out)  # plain gradient would give 0


def test_proportional_maxpool_by_hand():
    x = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    pool = nn.MaxPool2d(2)
    out = ProportionalMaxPool()(pool, x, pool(x), None)
    (g,) = torch.autograd.grad(out, x, grad_outputs=torch.ones_like(out))  # R_out = 4
    expected = torch.tensor([[[[0.5, 1.5], [0.0, 2.0]]]], dtype=torch.float64)
    torch.testing.assert_close(x.detach() * g, expected)


def test_alpha_beta_rejects_bad_parameters():
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        AlphaBeta(2.0, 2.0)
