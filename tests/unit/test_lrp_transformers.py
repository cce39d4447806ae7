"""LRP beyond plain CNNs (Ali et al. 2022, conservative propagation): LayerNorm and attention
held constant, squeeze-and-excitation gates, DenseNet's lonely BatchNorm. Conservation on
bias-free networks in float64 (biases, position embeddings and class tokens zeroed, layer
scales random), outputs unchanged, the patched functions restored."""

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig

from xai_utils.core.hooks import registered_hooks
from xai_utils.methods.lrp import attribute, conservative
from xai_utils.methods.lrp.conservative import held_constant, layer_norm

CONSTANTS = ("bias", "pos_embed", "pos_embedding", "cls_token", "class_token", "dist_token",
             "relative_position_bias_table")


def _bias_free(model: nn.Module, side: int) -> nn.Module:
    """Zero every constant that takes relevance (biases, position embeddings, class tokens,
    BatchNorm means), keep the BatchNorm scales of a calibration batch, randomise layer scales
    (ConvNeXt starts them at 1e-6, which would make every block nearly the identity) and
    a zero head."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if norms:
            model(torch.randn(8, 3, side, side, generator=gen))
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in CONSTANTS or any(c in name for c in CONSTANTS[1:]):
                p.zero_()
            elif leaf in ("gamma", "layer_scale"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        for m in norms:
            m.running_mean.zero_()
        for m in model.modules():  # torchvision's ViT starts its head at zero
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.1, generator=gen)
    return model.eval().double()


def _tiny(name: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if name == "torchvision_vit":
        return torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2,
                                                    hidden_dim=32, mlp_dim=64,
                                                    num_classes=5), 32
    if name == "timm_vit":
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                                 num_classes=5), 32
    if name == "timm_deit_distilled":
        return timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8,
                                 depth=2, num_classes=5), 32
    if name == "torchvision_convnext":
        blocks = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)]
        return torchvision.models.convnext.ConvNeXt(blocks, num_classes=5), 64
    if name == "timm_convnext":
        return timm.create_model("convnext_nano", depths=(1, 1, 1, 1),
                                 dims=(8, 16, 24, 32),
                                 num_classes=5), 64
    if name == "torchvision_swin":
        return torchvision.models.swin_transformer.SwinTransformer(
            [4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=5), 32
    if name == "torchvision_densenet":
        return torchvision.models.DenseNet(8, (2, 2), 16, num_classes=5), 32
    if name == "torchvision_mobilenet_v3":
        return torchvision.models.mobilenet_v3_small(num_classes=5), 64
    raise KeyError(name)


NETS = ["torchvision_vit", "timm_vit", "timm_deit_distilled", "torchvision_convnext",
        "timm_convnext", "torchvision_swin", "torchvision_densenet",
        "torchvision_mobilenet_v3"]
ATTENTION = NETS[:3] + ["torchvision_swin"]


@pytest.fixture(scope="module")
def nets():
    built = {}
    for name in NETS:
        model, side = _tiny(name)
        x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
        built[name] = (_bias_free(model, side), x.double())
    return built


@pytest.mark.parametrize("net", NETS)
def test_lrp0_sums_to_the_logit(nets, net):
    """With epsilon -> 0 every rule is LRP-0: relevance conserved to rounding."""
    model, x = nets[net]
    with torch.no_grad():
        out = model(x)
    target = out.argmax(1)
    relevance, logit = attribute(model, x, target, "epsilon", epsilon=1e-12)
    torch.testing.assert_close(logit, out.gather(1, target[:, None])[:, 0], rtol=1e-12, atol=0)
    assert (relevance != 0).float().mean() > 0.5  # relevance reaches most pixels
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-6, atol=0)
    assert registered_hooks(model) == 0


@pytest.mark.parametrize("net", ATTENTION)
def test_alpha_beta_on_transformers_sums_to_the_logit(nets, net):
    """alpha2beta1 conserves where each output has contributions of both signs, which the
    dense layers of a transformer have (depthwise convolutions on small maps do not)."""
    model, x = nets[net]
    target = torch.tensor([0, 3])
    relevance, logit = attribute(model, x, target, "alpha2beta1", stabilizer=1e-12)
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-6, atol=0)


def test_layer_norm_rule_is_linear_with_the_normaliser_fixed():
    """sum_j x_j g_j = sum_k g_k (y_k - b_k): the LN-rule conserves up to the bias."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 10, dtype=torch.float64, generator=gen, requires_grad=True)
    weight, bias = (torch.randn(10, dtype=torch.float64, generator=gen) for _ in range(2))
    g = torch.randn(4, 6, 10, dtype=torch.float64, generator=gen)
    y = layer_norm(x, (10,), weight, bias)
    torch.testing.assert_close(y, F.layer_norm(x, (10,), weight, bias), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close((x * grad).sum(), (g * (y - bias)).sum())
    (plain,) = torch.autograd.grad(F.layer_norm(x, (10,), weight, bias), x, g)
    assert not torch.allclose(grad, plain)  # the test can fail: the true gradient differs


def test_attention_relevance_reaches_the_values_only():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=gen, requires_grad=True)
               for _ in range(3))
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64, generator=gen)
    with held_constant():
        out = F.scaled_dot_product_attention(q, k, v)
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), g, allow_unused=True)
    weights = torch.softmax(q @ k.transpose(-2, -1) / 2.0, -1)
    torch.testing.assert_close(out, weights @ v)
    torch.testing.assert_close(gv, weights.transpose(-2, -1) @ g)
    assert gq is None and gk is None


def test_patched_functions_are_restored_even_after_an_error():
    originals = (F.layer_norm, F.softmax, F.scaled_dot_product_attention, torch.softmax,
                 torch.Tensor.softmax)
    with pytest.raises(RuntimeError, match="inside"), held_constant():
        assert F.layer_norm is layer_norm
        raise RuntimeError("inside")
    assert (F.layer_norm, F.softmax, F.scaled_dot_product_attention, torch.softmax,
            torch.Tensor.softmax) == originals
    x = torch.randn(3, requires_grad=True)
    assert x.softmax(0).requires_grad


def test_squeeze_excitation_gate_gets_no_relevance():
    """y = x * g(x): all relevance goes to x (the plain gradient would count it twice)."""
    torch.manual_seed(0)
    se = torchvision.ops.SqueezeExcitation(4, 2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), se,
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        for layer in (se.fc1, se.fc2):
            layer.bias.zero_()
    model = model.eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    relevance, logit = attribute(model, x, torch.tensor([0, 2]), "epsilon", epsilon=1e-12)
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-9, atol=0)


def test_attnlrp_attention_follows_the_softmax_and_uniform_rules():
    """AttnLRP (Achtibat et al. 2024, eqs. for the softmax and for a product of two inputs),
    checked against the formulas written out here: the values get half the output's
    relevance; the attention weights the other half; the softmax rule
    R_logit = x (R_A - A sum R_A) per row; queries and keys half of each logit's relevance."""
    from xai_utils.methods.lrp.conservative import attnlrp_attention

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    g = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64)
    out = attnlrp_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    gq, gk, gv = torch.autograd.grad(out, (q, k, v), grad_outputs=g)
    logits = q.detach() @ k.detach().transpose(-2, -1) * 4 ** -0.5
    a = logits.softmax(-1)
    r_a = a * (0.5 * g @ v.detach().transpose(-2, -1))
    r_logits = logits * (r_a - a * r_a.sum(-1, keepdim=True))
    torch.testing.assert_close(v.detach() * gv, 0.5 * (a.transpose(-2, -1) @ g) * v.detach())
    torch.testing.assert_close((q.detach() * gq).sum(-1), 0.5 * r_logits.sum(-1))
    torch.testing.assert_close((k.detach() * gk).sum(-1), 0.5 * r_logits.sum(-2))


@pytest.mark.parametrize("net", ["torchvision_vit", "timm_vit", "timm_deit_distilled"])
def test_attnlrp_sends_relevance_through_queries_and_keys(nets, net):
    """On ViTs the AttnLRP maps differ from the conservative ones (queries and keys now take
    relevance), are finite, and leave no patch behind."""
    model, x = nets[net]
    target = torch.tensor([1, 3])
    cp, _ = attribute(model, x, target, "epsilon", epsilon=1e-12)
    attn, _ = attribute(model, x, target, "epsilon", attention="attnlrp", epsilon=1e-12)
    assert torch.isfinite(attn).all() and attn.abs().sum() > 0
    assert not torch.allclose(attn, cp, rtol=1e-3, atol=1e-6)
    assert F.softmax is conservative._ORIGINAL["softmax"]
    assert registered_hooks(model) == 0


def test_attnlrp_refuses_attention_written_as_matrix_products(nets):
    from xai_utils.core.registry import MethodNotApplicable

    model, x = nets["torchvision_swin"]
    with pytest.raises(MethodNotApplicable, match="scaled_dot_product_attention"):
        attribute(model, x, torch.tensor([0, 1]), "epsilon", attention="attnlrp")
    assert torch.softmax is conservative._ORIGINAL["torch_softmax"]
    with pytest.raises(ValueError, match="attention must be one of"):
        attribute(model, x, torch.tensor([0, 1]), "epsilon", attention="attn")
