"""Invariants of representation inversion ("Deep Introspection" ch. 4; Mahendran & Vedaldi
2015/2016)."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import two_conv_net
from torch import nn

import xai_utils as xu
from xai_utils import inversion as inv
from xai_utils.core.hooks import registered_hooks


def tiny_net() -> nn.Module:
    return two_conv_net(classes=4, seed=0)


@pytest.mark.parametrize("alpha", [6.0, 4.0])
def test_alpha_norm_gradient_equals_autograd(alpha):
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    inv.alpha_norm(x, 0.8, alpha).sum().backward()
    assert torch.allclose(inv.alpha_norm_grad(x.detach(), 0.8, alpha), x.grad, rtol=1e-10,
                          atol=1e-14)


@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_tv_gradient_equals_autograd(beta):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    inv.tv_prior(x, 0.3, beta).sum().backward()
    assert torch.allclose(inv.tv_prior_grad(x.detach(), 0.3, beta), x.grad, rtol=1e-10, atol=1e-14)


def test_regulariser_values_by_hand():
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    x[0, :, 0, 0] = torch.tensor([3.0, 0.0, 4.0])            # one pixel of norm 5
    assert float(inv.alpha_norm(x, 5.0, 6)) == pytest.approx(0.25)    # (5/5)^6 / 4 pixels
    # differences: right and down neighbours of (0,0) each 25; TV = (50) / 4 / V^2
    assert float(inv.tv_prior(x, 1.0, 2)) == pytest.approx(50 / 4)


def test_clamp_pixels():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 3
    small = x.pow(2).sum(1).sqrt() <= 1.5
    y = inv.clamp_pixels(x.clone(), 1.5)
    norms = y.pow(2).sum(1).sqrt()
    assert norms.max() <= 1.5 + 1e-12
    assert torch.equal(y.permute(0, 2, 3, 1)[small], x.permute(0, 2, 3, 1)[small])


def test_features_stop_early_and_remove_hooks():
    net = tiny_net()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    out = inv.layer_outputs(net, x, ["1"])
    assert set(out) == {"1"} and out["1"].shape == (1, 6, 8, 8)
    assert registered_hooks(net) == 0
    with pytest.raises(ValueError, match="no layer"):
        inv.layer_outputs(net, x, ["nope"])
    assert registered_hooks(net) == 0


def test_identity_inversion_recovers_image():
    net = nn.Sequential(nn.Identity()).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64) * 0.5
    res = inv.invert_target(net, x, "0", 8, restarts=2, steps=(150, 30), tv_scale=0.0,
                            alpha_weight=0.0, clamp=0.0, jitter=0, bound=1.0,
                            optimizer="adam", lr=0.1, progress=False)
    assert res.error.max() < 1e-6
    assert torch.allclose(res.images, x.expand(2, -1, -1, -1), atol=2e-3)


def test_objective_decreases_and_clamp_holds():
    net = tiny_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    res = inv.invert(net, x, "4", restarts=2, steps=(60, 10), bound=1.0, C=10.0, clamp=1.0,
                     jitter=1, progress=False)
    assert (res.objective[-1] < 0.2 * res.objective[0]).all()
    assert (res.loss[-5:].mean(0) < res.loss[:5].mean(0)).all()
    assert res.images.pow(2).sum(1).sqrt().max() <= 1.0 + 1e-9


def test_batched_restarts_equal_sequential_runs():
    net = tiny_net()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    kw = dict(steps=(8, 2), bound=1.0, C=5.0, jitter=2, progress=False)
    batched = inv.invert(net, x, "4", restarts=2, seed=7, **kw)
    for i in range(2):
        for r in range(2):
            single = inv.invert(net, x[i:i + 1], "4", restarts=1, seed=7 + r, **kw)
            assert torch.allclose(batched.images[2 * i + r], single.images[0], atol=1e-10)
            assert torch.allclose(batched.loss[:, 2 * i + r], single.loss[:, 0], atol=1e-10)
    assert not torch.allclose(batched.images[0], batched.images[1])


def test_per_element_layers_and_weights():
    net = tiny_net()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    res = inv.invert(net, x, ["1", "logits"], restarts=2, steps=(3, 1), bound=1.0,
                     tv_scale=[0.0, 6.5, 2.0, 15.0], jitter=0, progress=False)
    assert res.images.shape == (4, 3, 8, 8) and res.loss.shape == (4, 4)
    with pytest.raises(ValueError, match="1 or 4"):
        inv.invert(net, x, "1", restarts=2, steps=(1, 0), bound=1.0, C=[1.0, 2.0],
                   progress=False)


def test_isolate_modes_and_boxes():
    model = xu.load_model("shapes_vgg")
    x = torch.rand(1, 3, 112, 112)
    mask = torch.zeros(112, 112, dtype=torch.bool)
    mask[10:20, 30:50] = True
    box = inv.bounding_box(mask)
    assert box == (10, 30, 20, 50)
    noisy = inv.isolate(model, x, [box], mode="noise", seed=1)
    assert torch.equal(noisy[0, :, 10:20, 30:50], x[0, :, 10:20, 30:50])
    assert not torch.allclose(noisy[0, :, :10], x[0, :, :10])
    centred = inv.isolate(model, x, [box], mode="centre", seed=1)
    assert torch.equal(centred[0, :, 51:61, 46:66], x[0, :, 10:20, 30:50])
    resized = inv.isolate(model, x, [box], mode="resize")
    assert resized.shape == x.shape
    with pytest.raises(ValueError, match="outside"):
        inv.isolate(model, x, [(0, 0, 0, 5)])


def test_boundary_targets():
    model = xu.load_model("shapes_vgg")
    raw = inv.boundary_target(model, 0, 1, mode="raw")
    assert torch.allclose(raw, torch.tensor([[0.5, 0.5]]))
    from xai_utils.data import shapes

    batch = shapes.generate(8, seed=3)
    a, b = batch.images[batch.labels == 0], batch.images[batch.labels == 1]
    mean = inv.boundary_target(model, 0, 1, mode="mean", layer="pool", images_a=a, images_b=b)
    ra, rb = inv.representation(model, a, "pool"), inv.representation(model, b, "pool")
    assert torch.allclose(mean[0], (ra.mean(0) + rb.mean(0)) / 2)


def test_error_stats_by_hand():
    e = torch.tensor([0.1, 0.3, 0.2, 0.2])
    stats = inv.error_stats(e, restarts=2)
    assert stats["mean_error"] == pytest.approx(0.2)
    assert stats["std_over_restarts"] == pytest.approx((2 ** 0.5 * 0.1) / 2)


def test_real_nets_error_falls():
    shapes_model = xu.load_model("shapes_vgg")
    from xai_utils.data import shapes

    x = shapes.generate(1, seed=5).images
    res = inv.invert(shapes_model, x, "pool", restarts=2, steps=(40, 10), C=100.0,
                     progress=False)
    assert (res.loss[-5:].mean(0) < 0.5 * res.loss[:5].mean(0)).all()
    eff = xu.load_model("efficientnet_lite0")
    xe = xu.preprocess(xu.load_sample("chelsea"), eff, size=32)
    res = inv.invert(eff, xe, "blocks.1", restarts=1, steps=(12, 3), C=100.0, progress=False)
    assert res.loss[-1, 0] < 0.8 * res.loss[0, 0]


def test_prior_is_centred_on_the_mean_natural_image():
    """Without the representation term (C = 0) the alpha-norm and TV pull the image to the
    mean natural image (grey for the shapes model, whose inputs are raw [0, 1] pixels), not
    to black."""
    model = xu.load_model("shapes_vgg")
    centre = inv.natural_centre(model)
    assert 0.45 < float(centre.mean()) < 0.65
    target = torch.zeros(1, 64)
    res = inv.invert_target(model, target, "pool", 24, restarts=1, steps=(60, 0), C=0.0,
                            progress=False, jitter=0, snapshots=(0,))
    before = (res.snapshots[0] - centre).abs().mean()
    after = (res.images - centre).abs().mean()
    assert after < 0.5 * before


def test_default_layers_spread_over_the_stages_and_end_at_the_pooled_code(effnet):
    """The layers a notebook inverts for any MODEL: on EfficientNet-Lite0 the thesis-style
    choice the notebook used to name by hand, on a ResNet its stages and its pool."""
    assert inv.default_layers(effnet) == (["blocks.1", "blocks.3", "blocks.5", "global_pool"],
                                          [100.0, 100.0, 20.0, 1.0])
    resnet = xu.load_model("resnet18", pretrained=False)
    assert inv.default_layers(resnet) == (["layer1", "layer2", "layer3", "avgpool"],
                                          [100.0, 100.0, 20.0, 1.0])
    vector = inv.representation(resnet, torch.zeros(1, 3, 64, 64), "avgpool")
    assert vector.flatten(1).shape == (1, resnet.fc.in_features)  # the code the head reads


def test_per_element_jitter_equals_sequential_runs():
    net = tiny_net()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    t = [inv.representation(net, x, "4")[0]] * 2
    kw = dict(steps=(6, 2), bound=1.0, C=5.0, progress=False)
    both = inv.invert_target(net, t, "4", 12, restarts=1, seed=3, jitter=[0, 2], **kw)
    for i, j in enumerate([0, 2]):
        one = inv.invert_target(net, t[:1], "4", 12, restarts=1, seed=3, jitter=j, **kw)
        assert torch.allclose(both.images[i], one.images[0], atol=1e-10)


def test_default_jitter_is_a_quarter_of_each_layers_stride():
    """MV16 roll the input by up to a quarter of the inverted layer's stride: each element
    gets its own layer's, not the largest in the batch."""
    net = tiny_net()
    assert inv.layer_stride(net, "1", 16) == 1 and inv.layer_stride(net, "4", 16) == 2
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    kw = dict(restarts=1, steps=(3, 0), bound=1.0, progress=False)
    t = [inv.representation(net, x, "1")[0], inv.representation(net, x, "logits")[0]]
    auto = inv.invert_target(net, t, ["1", "logits"], 16, **kw)
    given = inv.invert_target(net, t, ["1", "logits"], 16, jitter=[0, 8], **kw)
    assert torch.equal(auto.images, given.images)


def test_engine_without_jitter_reaches_plain_adam():
    """The control of notebook 07: without jitter the engine's AdaGrad reaches about the
    error of an independent `torch.optim.Adam` on the same objective (within a factor 1.5),
    and jitter costs error at the same budget."""
    net = tiny_net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    t = [inv.representation(net, x, "4")[0]]
    kw = dict(restarts=2, seed=0, steps=(60, 10), C=1000.0, bound=1.0)
    ref = inv.reference_target(net, t, "4", 16, **kw)
    eng = inv.invert_target(net, t, "4", 16, jitter=0, progress=False, **kw)
    jit = inv.invert_target(net, t, "4", 16, jitter=4, progress=False, **kw)
    assert (ref.loss[-1] < 0.2 * ref.loss[0]).all()
    ratio = float(eng.error.mean() / ref.error.mean())
    assert 1 / 1.5 < ratio < 1.5
    assert jit.error.mean() > 2 * eng.error.mean()


def test_plain_adam_recovers_an_identity_image():
    net = nn.Sequential(nn.Identity()).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64) * 0.5
    res = inv.reference_target(net, x, "0", 8, restarts=1, steps=(150, 30), tv_scale=0.0,
                               alpha_weight=0.0, clamp=0.0, bound=1.0, lr=0.1)
    assert res.error.max() < 1e-6
