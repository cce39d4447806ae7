"""LRP on whole networks: conservation (biases zeroed, float64), alpha1-beta0 positivity,
canonizers that keep outputs and restore the model, clear errors, hooks removed."""

import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.core.hooks import registered_hooks
from xai_utils.core.model_state import BATCHNORM, MergedBatchNorm
from xai_utils.methods.lrp import ACTIVATIONS, attribute, canonized, input_bounds


def _zero_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if isinstance(module, BATCHNORM):
                module.running_mean.zero_()
    return model


def _random_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm statistics and scales that make merging non-trivial (some scales < 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BATCHNORM):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 1.5 - 0.25)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    shapes = _zero_biases(xu.load_model("shapes_vgg", device_="cpu").double())
    vgg = _zero_biases(xu.load_model("vgg16", pretrained=False, device_="cpu").double())
    resnet = xu.load_model("resnet18", pretrained=False, device_="cpu")
    resnet = _zero_biases(_random_batchnorm(resnet, 1).double())
    images = xu.data.shapes.generate(2, seed=3).images.double()
    small = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)).double()
    normalize = (small - 0.45) / 0.226
    return {"shapes_vgg": (shapes, images), "vgg16": (vgg, normalize[:1]),
            "resnet18": (resnet, normalize)}


@pytest.mark.parametrize("net", ["shapes_vgg", "vgg16", "resnet18"])
@pytest.mark.parametrize("composite,params", [
    ("epsilon", {"epsilon": 1e-12}), ("zplus", {"stabilizer": 1e-12}),
    ("alpha2beta1", {"stabilizer": 1e-12}), ("thesis", {"stabilizer": 1e-12}),
])
def test_relevance_sums_to_the_logit(nets, net, composite, params):
    model, x = nets[net]
    target = model(x).argmax(1)
    relevance, logit = attribute(model, x, target, composite, **params)
    assert relevance.dtype == torch.float64 and relevance.shape == x.shape
    total = relevance.flatten(1).sum(1)
    torch.testing.assert_close(total, logit, rtol=1e-6, atol=0)
    assert registered_hooks(model) == 0


@pytest.mark.parametrize("net", ["shapes_vgg", "vgg16"])
def test_alpha1beta0_relevance_is_never_negative(nets, net):
    model, x = nets[net]
    target = model(x).argmax(1)
    relevance, logit = attribute(model, x, target, "alpha1beta0")
    assert (logit > 0).all()
    assert (relevance >= 0).all() and (relevance > 0).any()
    eps_relevance, _ = attribute(model, x, target, "epsilon")  # the test can fail:
    assert (eps_relevance < 0).any()  # other rules do give negative relevance here


def test_proportional_maxpool_also_conserves(nets):
    model, x = nets["shapes_vgg"]
    target = model(x).argmax(1)
    relevance, logit = attribute(model, x, target, "zplus", maxpool="proportional",
                                 stabilizer=1e-12)
    wta, _ = attribute(model, x, target, "zplus")
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-6, atol=0)
    assert not torch.allclose(relevance, wta)


@pytest.fixture(scope="module")
def lite0():
    return xu.load_model("efficientnet_lite0", device_="cpu")


@pytest.mark.parametrize("which", ["resnet18", "efficientnet_lite0"])
def test_canonized_model_has_same_outputs_and_is_restored(nets, lite0, which):
    if which == "resnet18":
        model = _random_batchnorm(xu.load_model("resnet18", pretrained=False,
                                                device_="cpu"), 2).double()
        x = nets["vgg16"][1]
    else:
        model, x = lite0.double(), torch.rand(1, 3, 64, 64, dtype=torch.float64) * 2 - 1
    params = {n: p for n, p in model.named_parameters()}
    values = {n: p.detach().clone() for n, p in params.items()}
    modules = dict(model.named_modules())
    n_bn = sum(isinstance(m, BATCHNORM) for m in modules.values())
    with torch.no_grad():
        before = model(x)
        with canonized(model, ACTIVATIONS) as pairs:
            inside = model(x)
            assert len(pairs) == n_bn > 0
            assert not any(isinstance(m, BATCHNORM) for m in model.modules())
            assert sum(isinstance(m, MergedBatchNorm) for m in model.modules()) == n_bn
        after = model(x)
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, before)
    assert dict(model.named_modules()) == modules
    for name, p in model.named_parameters():
        assert p is params[name] and torch.equal(p, values[name])
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU6))
    model.float()


def test_efficientnet_lite0_runs_batched(lite0):
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expl = xu.explain("lrp", lite0, x, target=[1, 2], composite="epsilon_gamma_box")
    assert expl.saliency.shape == (2, 96, 96) and torch.isfinite(expl.saliency).all()
    assert expl.extras["relevance"].shape == x.shape
    single = xu.explain("lrp", lite0, x[1:], target=2, composite="epsilon_gamma_box")
    torch.testing.assert_close(single.saliency[0], expl.saliency[1], rtol=1e-4, atol=1e-6)
    assert registered_hooks(lite0) == 0


def test_relu6_saturation_conserves_relevance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.ReLU6(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 3, bias=False)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(20)
        model[1].running_var.fill_(1.0)
        model[5].weight.abs_()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert (model[:2](x) > 6).any()  # ReLU6 saturates somewhere
    relevance, logit = attribute(model, x, torch.tensor([0, 1]), "zplus", stabilizer=1e-15)
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-9, atol=0)


def test_zbox_bounds_come_from_preprocessing(lite0, shapes_model):
    low, high = input_bounds(lite0)
    assert low.flatten().tolist() == [-1.0] * 3 and high.flatten().tolist() == [1.0] * 3
    low, high = input_bounds(xu.load_model("resnet18", pretrained=False, device_="cpu"))
    torch.testing.assert_close(low.flatten(), -torch.tensor([0.485, 0.456, 0.406],
                                                            dtype=torch.float64) / torch.tensor(
        [0.229, 0.224, 0.225], dtype=torch.float64))
    low, high = input_bounds(shapes_model)
    assert low.flatten().tolist() == [0.0] * 3 and high.flatten().tolist() == [1.0] * 3


def test_uncovered_layer_is_named_and_model_restored():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.LocalResponseNorm(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    bn = model[1]
    with pytest.raises(TypeError, match=r"'3' \(LocalResponseNorm\)"):
        xu.explain("lrp", model, torch.rand(1, 3, 8, 8), composite="zplus")
    assert model[1] is bn and registered_hooks(model) == 0


def test_lonely_batchnorm_passes_relevance_through_its_scale():
    """A BatchNorm after no convolution (DenseNet) is the affine map s x + t with the epsilon
    rule: with t = 0 each input keeps its output's relevance, so the net's input relevance
    equals that of the same net without the BatchNorm at input s x."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3).eval().double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.7, 0.3]))
        norm.running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
        norm.bias.zero_()
    rest = nn.Sequential(nn.Conv2d(3, 2, 3, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten()).eval().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 1])
    relevance, logit = attribute(nn.Sequential(norm, rest), x, target, "epsilon",
                                 epsilon=1e-12)
    with torch.no_grad():
        scaled = norm(x)
    expected, _ = attribute(rest, scaled, target, "epsilon", epsilon=1e-12)
    torch.testing.assert_close(relevance, expected)
    torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-9, atol=0)


def test_training_mode_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).train()
    with pytest.raises(ValueError, match="training mode"):
        xu.explain("lrp", model, torch.rand(2, 3, 8, 8), composite="epsilon")


def test_unknown_composite_suggests_names(shapes_model):
    with pytest.raises(ValueError, match="alpha2beta1"):
        xu.explain("lrp", shapes_model, torch.rand(1, 3, 112, 112), composite="alpha2beta")


def test_explanation_fields(shapes_model):
    x = xu.data.shapes.generate(3, seed=0).images
    expl = xu.explain("lrp", shapes_model, x)
    assert expl.method == "lrp" and expl.extras["composite"] == "epsilon_gamma_box"
    torch.testing.assert_close(expl.saliency, expl.extras["relevance"].sum(1))
    torch.testing.assert_close(expl.extras["logit"],
                               shapes_model(x).gather(1, expl.target[:, None])[:, 0])
    assert "lrp" in xu.methods()


def test_alpha_beta_in_float32_does_not_depend_on_the_batch(lite0):
    """The thesis composite on real photos: a float32 heatmap must not change with the other
    images of the batch (rounding in z - pos once made it differ by 11 %), and must match
    float64."""
    x = torch.cat([xu.preprocess(xu.load_sample(n), lite0) for n in ("rocket", "chelsea")])
    target = torch.tensor([812, 282])
    alone = xu.explain("lrp", lite0, x[:1], target[:1], composite="thesis")
    batched = xu.explain("lrp", lite0, x, target, composite="thesis")
    exact = xu.explain("lrp", lite0.double(), x[:1].double(), target[:1], composite="thesis")
    alone, batched, exact = (e.extras["relevance"][0] for e in (alone, batched, exact))
    lite0.float()
    assert float((batched - alone).norm() / alone.norm()) < 1e-4
    assert float((alone.double() - exact).norm() / exact.norm()) < 1e-3


@pytest.mark.parametrize("contrast", ["clrp", "sglrp"])
def test_contrastive_relevance_is_lrp_of_its_output_relevance(nets, contrast):
    """CLRP and SGLRP start LRP from another output relevance; with LRP-0 on a bias-free
    ReLU net the relevance of output k is x * grad z_k (times R_k / z_k), so the result must
    equal that closed form, built here from plain autograd, and sum to the output
    relevance: 0 for both (the dual class gets the target's score; a softmax gradient sums
    to zero)."""
    from xai_utils.methods.lrp import output_relevance

    model, x = nets["resnet18"]
    target = torch.tensor([3, 7])
    relevance, _ = attribute(model, x, target, "epsilon", contrast=contrast, epsilon=1e-12)
    xg = x.clone().requires_grad_(True)
    z = model(xg)
    starts = output_relevance(z, target, contrast)
    signed = starts[0] - starts[1] if contrast == "clrp" else starts[0]
    (grad,) = torch.autograd.grad(z, xg, grad_outputs=signed / z.detach())
    torch.testing.assert_close(relevance, x * grad, rtol=1e-6, atol=1e-9)
    total = relevance.flatten(1).sum(1)
    torch.testing.assert_close(total, signed.sum(1), rtol=0, atol=1e-9)
    assert registered_hooks(model) == 0


def test_output_relevance_of_each_contrast():
    from xai_utils.methods.lrp import output_relevance

    z = torch.tensor([[2.0, -1.0, 0.5, 1.0]])
    t = torch.tensor([0])
    (own,) = output_relevance(z, t)
    assert own.tolist() == [[2.0, 0.0, 0.0, 0.0]]
    own, dual = output_relevance(z, t, "clrp")
    torch.testing.assert_close(dual, torch.tensor([[0.0, 2 / 3, 2 / 3, 2 / 3]]))
    (soft,) = output_relevance(z, t, "sglrp")
    p = z.softmax(1)
    torch.testing.assert_close(soft, p[0, 0] * (torch.tensor([[1.0, 0, 0, 0]]) - p))
    assert soft[0, 0] > 0 and (soft[0, 1:] < 0).all()
    with pytest.raises(ValueError, match="unknown contrast 'dual'"):
        output_relevance(z, t, "dual")


def test_clrp_map_is_the_positive_part_of_the_difference(shapes_model):
    x = xu.data.shapes.generate(2, seed=4).images
    e = xu.explain("lrp", shapes_model, x, contrast="clrp")
    assert (e.saliency >= 0).all() and e.extras["contrast"] == "clrp"
    torch.testing.assert_close(e.saliency, e.extras["relevance"].sum(1).clamp_min(0))
    assert e.saliency.amax() > 0
