"""Whole-network LRP heatmaps against Zennit (a test-only dependency) for the same composite,
in float64: relative L2 difference <= 1e-4."""

import pytest
import torch

import xai_utils as xu
from xai_utils.methods.lrp import attribute, input_bounds

zennit = pytest.importorskip("zennit")
from zennit import composites as zc  # noqa: E402
from zennit import rules as zr  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Linear as ZLinear  # noqa: E402


def _thesis(low, high, canonizers):
    """alpha=2, beta=1 on every conv/linear layer (biases ignored), z^B on the first."""
    layer_map = zc.layer_map_base(1e-6) + [(ZLinear, zr.AlphaBeta(2, 1, zero_params="bias"))]
    first_map = [(ZLinear, zr.ZBox(low, high))]
    return zc.SpecialFirstLayerMapComposite(layer_map, first_map, canonizers=canonizers)


# ours (composite, parameters) -> a Zennit composite built from (low, high, canonizers)
PAIRS = {
    "epsilon_plus_flat": ({"bias": True},
                          lambda lo, hi, c: zc.EpsilonPlusFlat(canonizers=c)),
    "epsilon_alpha2beta1": ({"bias": True},
                            lambda lo, hi, c: zc.EpsilonAlpha2Beta1(canonizers=c)),
    "epsilon_gamma_box": ({}, lambda lo, hi, c: zc.EpsilonGammaBox(lo, hi, canonizers=c)),
    "thesis": ({}, _thesis),
    "zplus": ({"bias": False}, lambda lo, hi, c: zc.EpsilonPlus(
        zero_params="bias", canonizers=c, layer_map=[(ZLinear, zr.ZPlus(zero_params="bias"))])),
}


def zennit_relevance(model, x, target, composite):
    """Zennit's input relevance with the output relevance set to the target logit (ours)."""
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        out = modified(x)
        seed = torch.zeros_like(out).scatter_(1, target[:, None], 1.0) * out.detach()
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=seed)
    return relevance


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    shapes = xu.load_model("shapes_vgg", device_="cpu").double()
    vgg = xu.load_model("vgg16", pretrained=False, device_="cpu").double()
    with torch.no_grad():  # torchvision initialises VGG biases to zero; make them count
        for m in vgg.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.01)
    resnet = xu.load_model("resnet18", pretrained=False, device_="cpu").double()
    small = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)).double()
    small = (small - 0.45) / 0.226
    return {
        "shapes_vgg": (shapes, xu.data.shapes.generate(2, seed=7).images.double(), None),
        "vgg16": (vgg, small, VGGCanonizer),
        "resnet18": (resnet, small, ResNetCanonizer),
    }


def _rel_l2(a, b):
    return ((a - b).norm() / b.norm()).item()


CASES = [("shapes_vgg", name) for name in sorted(PAIRS)] + [
    ("vgg16", name) for name in ("epsilon_alpha2beta1", "epsilon_plus_flat", "thesis")]


@pytest.mark.parametrize("net,name", CASES)
def test_heatmaps_match_zennit(nets, net, name):
    model, x, canonizer = nets[net]
    params, make = PAIRS[name]
    target = model(x).argmax(1)
    ours, _ = attribute(model, x, target, name, **params)
    low, high = input_bounds(model)
    theirs = zennit_relevance(model, x, target,
                              make(low, high, [canonizer()] if canonizer else None))
    assert theirs.abs().sum() > 0
    assert _rel_l2(ours, theirs) <= 1e-4
    if net == "shapes_vgg":  # the comparison can fail: a different composite is far away
        other = "epsilon_plus_flat" if name != "epsilon_plus_flat" else "thesis"
        assert _rel_l2(attribute(model, x, target, other, **PAIRS[other][0])[0], theirs) > 1e-2


def test_resnet18_matches_zennit_with_its_canonizer(nets):
    """BatchNorm merging and the residual sum (Zennit: a Sum module with the Norm rule; here
    the gradient of the addition) give the same heatmap."""
    model, x, canonizer = nets["resnet18"]
    target = model(x).argmax(1)
    ours, _ = attribute(model, x, target, "epsilon_alpha2beta1", bias=True)
    theirs = zennit_relevance(model, x, target, zc.EpsilonAlpha2Beta1(canonizers=[canonizer()]))
    assert _rel_l2(ours, theirs) <= 1e-4
