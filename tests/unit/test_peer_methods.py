"""The methods every peer library has, each against its reference implementation on the same
model and input: Integrated Gradients and SmoothGrad (Captum), guided backpropagation and
Guided Grad-CAM (Captum), Grad-CAM++, LayerCAM and Score-CAM (pytorch-grad-cam), RISE
(TorchRay, given the same masks); and the identities they promise."""

import numpy as np
import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.methods import (  # noqa: F401 - registers them
    cam,
    guided,
    integrated_gradients,
    rise,
    smoothgrad,
)

captum_attr = pytest.importorskip("captum.attr")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def vgg64(shapes_model):
    """shapes_vgg in float64 (plain nn.ReLU modules, as Captum's guided methods need)."""
    import copy
    return copy.deepcopy(shapes_model).double()


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(2, 3, 112, 112, dtype=torch.float64), torch.tensor([1, 0])


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_integrated_gradients_equals_captum(vgg64, batch, method):
    x, t = batch
    ours = xu.explain("integrated_gradients", vgg64, x, t, steps=16, method=method)
    ref = captum_attr.IntegratedGradients(vgg64).attribute(x, target=t, n_steps=16,
                                                           method=method)
    assert rel(ours.extras["attribution"], ref) <= 1e-4
    torch.testing.assert_close(ours.saliency, ours.extras["attribution"].sum(1))


def test_integrated_gradients_departures_from_captum_are_the_stated_ones(vgg64, batch):
    """Captum's trapezoid weights sum to (n - 1) / n; its Riemann points are float32."""
    x, t = batch
    ours = xu.explain("integrated_gradients", vgg64, x, t, steps=16,
                      method="riemann_trapezoid").extras["attribution"]
    ref = captum_attr.IntegratedGradients(vgg64).attribute(x, target=t, n_steps=16,
                                                           method="riemann_trapezoid")
    assert rel(ours * 15 / 16, ref) <= 1e-6


def test_integrated_gradients_is_complete_and_baselines_differ():
    """On a smooth network the attributions sum to f(x) - f(baseline) (completeness, the
    paper's axiom), to the quadrature's accuracy; the three baselines are distinct images."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3), nn.Softplus()).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    bases = set()
    for baseline in ("zero", "black", "blur"):
        out = xu.explain("integrated_gradients", net, x, [0, 2], steps=24, baseline=baseline)
        with torch.no_grad():
            f = net(torch.cat([x, out.extras["baseline"]]))[:, [0, 2, 0, 2]].diagonal()
        assert out.extras["completeness_gap"].abs().max() < 1e-9 * f.abs().max()
        torch.testing.assert_close(out.saliency.sum((1, 2)), f[:2] - f[2:])
        bases.add(float(out.extras["baseline"].sum()))
    assert len(bases) == 3


def test_smoothgrad_equals_captum_saliency_on_the_same_noise(vgg64, batch):
    """Our noisy copies through Captum's Saliency, averaged as NoiseTunnel's three types."""
    x, t = batch
    copies = smoothgrad.noisy_copies(x, 6, 0.2, seed=3)
    grads = captum_attr.Saliency(vgg64).attribute(copies, target=t.repeat(6),
                                                  abs=False).view(6, *x.shape)
    expected = {"mean": grads.mean(0), "squared": grads.pow(2).mean(0),
                "vargrad": grads.var(0, unbiased=False)}
    for variant, ref in expected.items():
        ours = xu.explain("smoothgrad", vgg64, x, t, samples=6, noise=0.2, seed=3,
                          variant=variant)
        assert rel(ours.extras["attribution"], ref) <= 1e-10, variant
        torch.testing.assert_close(ours.saliency, ref.abs().amax(1))


def test_smoothgrad_noise_level_and_zero_noise(vgg64, batch):
    x, t = batch
    copies = smoothgrad.noisy_copies(x, 400, 0.1, seed=0).view(400, *x.shape)
    sigma = (copies - x).std(dim=(0, 2, 3, 4))
    span = x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))
    torch.testing.assert_close(sigma, 0.1 * span, rtol=0.02, atol=0)
    plain = xu.explain("gradient", vgg64, x, t)
    none = xu.explain("smoothgrad", vgg64, x, t, samples=2, noise=0.0)
    torch.testing.assert_close(none.extras["attribution"], plain.extras["attribution"])


def test_guided_backprop_and_guided_gradcam_equal_captum(shapes_model):
    net = xu.load_model("torchvision:resnet18", pretrained=False, device_="cpu").double()
    torch.manual_seed(2)
    x, t = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.tensor([5, 9])
    ours = xu.explain("guided_backprop", net, x, t).extras["attribution"]
    assert rel(ours, captum_attr.GuidedBackprop(net).attribute(x, target=t)) <= 1e-10
    ggc = xu.explain("guided_gradcam", net, x, t, interpolation="nearest")
    layer = dict(net.named_modules())[ggc.extras["layer"]]
    ref = captum_attr.GuidedGradCam(net, layer).attribute(x, target=t)
    assert rel(ggc.extras["attribution"], ref) <= 1e-10


def test_guided_backprop_refuses_a_model_without_relu_modules():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(xu.MethodNotApplicable, match="no nn.ReLU"):
        xu.explain("guided_backprop", net, torch.zeros(1, 3, 8, 8), 0)


@pytest.mark.parametrize("name", ["gradcampp", "layercam", "scorecam"])
def test_cam_variants_equal_pytorch_grad_cam(shapes_model, name):
    """The same layer, pytorch-grad-cam's min-max scaling: r >= 0.999 per map."""
    gc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref_class = {"gradcampp": gc.GradCAMPlusPlus, "layercam": gc.LayerCAM,
                 "scorecam": gc.ScoreCAM}[name]
    x = xu.preprocess(list(xu.data.shapes.generate(2, seed=4).images), shapes_model)
    t = [0, 1]
    layer = "features.7"
    if name == "scorecam":  # pytorch-grad-cam upsamples the masks with aligned corners
        ours = cam.ScoreCAM(shapes_model, layer, align_corners=True)(x, t).saliency
        ours = ours[:, 0]
    else:
        ours = xu.explain(name, shapes_model, x, t, layer=layer).saliency
    with ref_class(model=shapes_model, target_layers=[dict(shapes_model.named_modules())[layer]]
                   ) as reference:
        theirs = reference(input_tensor=x, targets=[ClassifierOutputTarget(i) for i in t])
    for b in range(2):
        ours_b = xu.viz.normalize(ours[b])
        assert np.corrcoef(ours_b.ravel(), theirs[b].ravel())[0, 1] >= 0.999


def test_layercam_at_the_last_layer_is_gradcam_when_gradients_are_uniform():
    """With one linear head over global average pooling and non-negative weights, every
    location's gradient is w / hw, so LayerCAM = Grad-CAM (LayerCAM's eq. 5 vs Grad-CAM's)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[4].weight.abs_()
    x = torch.randn(2, 3, 12, 12)
    a = xu.explain("layercam", net, x, 0, layer="1").saliency
    b = xu.explain("gradcam", net, x, 0, layer="1").saliency
    torch.testing.assert_close(a, b)


def test_rise_equals_torchray_given_the_same_masks(shapes_model):
    """TorchRay weights by the sigmoid and divides by N; the paper (ours) divides by N p."""
    torchray_rise = pytest.importorskip("torchray.attribution.rise").rise
    x = xu.preprocess(list(xu.data.shapes.generate(2, seed=5).images), shapes_model)
    t = torch.tensor([1, 0])
    masks = rise.rise_masks(120, (112, 112), cells=7, p=0.5, seed=3)
    ours = xu.explain("rise", shapes_model, x, t, masks=masks, output="sigmoid", p=0.5)
    ref = torchray_rise(shapes_model, x, filter_masks=masks[:, None], num_masks=120,
                        batch_size=40)[torch.arange(2), t]
    torch.testing.assert_close(ours.saliency, ref / 0.5, rtol=1e-5, atol=1e-7)


def test_rise_masks_are_the_papers():
    """Values in [0, 1], mean p, every mask a smooth upsampled grid (no hard edges inside a
    cell), the same seed the same masks."""
    m = rise.rise_masks(300, (64, 64), cells=4, p=0.3, seed=1)
    assert m.shape == (300, 64, 64) and 0 <= m.min() and m.max() <= 1
    assert abs(float(m.mean()) - 0.3) < 0.03
    assert float((m[:, 1:] - m[:, :-1]).abs().max()) <= 1 / 16 + 1e-6  # 16 px cells
    torch.testing.assert_close(m, rise.rise_masks(300, (64, 64), cells=4, p=0.3, seed=1))
