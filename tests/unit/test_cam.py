"""CAM and Grad-CAM: hand-worked values, the identities of REFERENCES.md on real nets, and
agreement with pytorch-grad-cam and Captum."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import xai_utils as xu
from xai_utils.core.hooks import registered_hooks
from xai_utils.methods import cam as C


class Tiny(nn.Module):
    """features (ReLU) -> global average pool -> linear, with hand-picked weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 0.5]]))
            self.classifier.bias.copy_(torch.tensor([0.1, -0.2]))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


# A after the ReLU: channel 0 [[1, 2], [3, 4]], channel 1 [[0, 1], [0, 0]]
TINY_X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]], dtype=torch.float64)


def test_hand_worked_cam_and_gradcam():
    model = Tiny()
    assert C.default_layer(model) == "features.0"
    # logits: [1*2.5 - 1*0.25 + 0.1, 2*2.5 + 0.5*0.25 - 0.2] = [2.35, 4.925]
    cam = C.CAM(model)(TINY_X, [[0, 1]])
    want0 = torch.tensor([[1.0, 1.0], [3.0, 4.0]], dtype=torch.float64)  # A0 - A1
    want1 = torch.tensor([[2.0, 4.5], [6.0, 8.0]], dtype=torch.float64)  # 2 A0 + 0.5 A1
    torch.testing.assert_close(cam.lowres[0], torch.stack([want0, want1]))
    torch.testing.assert_close(cam.logits[0], torch.tensor([2.35, 4.925], dtype=torch.float64))
    grad = C.GradCAM(model)(TINY_X, [[0, 1]])
    torch.testing.assert_close(grad.weights[0], torch.tensor([[0.25, -0.25], [0.5, 0.125]],
                                                             dtype=torch.float64))
    torch.testing.assert_close(grad.lowres[0], torch.stack([want0, want1]) / 4)
    # counterfactual: ReLU(-CAM) / 4 is zero here (the class-0 map is positive everywhere)
    counter = C.GradCAM(model, counterfactual=True)(TINY_X, 0)
    assert counter.lowres.abs().max() == 0
    raw = C.GradCAM(model, relu=False, counterfactual=True)(TINY_X, 0)
    torch.testing.assert_close(raw.lowres[0, 0], -want0 / 4)


def test_upsampling_is_bilinear_to_the_input_size():
    from xai_utils.data import shapes

    out = C.GradCAM(xu.load_model("shapes_vgg"))(shapes.generate(2, seed=1).images)
    assert out.lowres.shape == (2, 1, 14, 14) and out.saliency.shape == (2, 1, 112, 112)
    up = torch.nn.functional.interpolate(out.lowres, size=(112, 112), mode="bilinear")
    torch.testing.assert_close(out.saliency, up)


@pytest.fixture(scope="module")
def nets(effnet):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    # 128 px keeps float64 fast on a CPU; the identities hold at any input size (4 x 4 maps)
    x = xu.preprocess([xu.load_sample("chelsea"), xu.load_sample("coffee")], effnet, size=128)
    return {"efficientnet_lite0": (effnet, x), "resnet18": (resnet, x)}


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_cam_identity_and_gradcam_equals_relu_cam(nets, name):
    model, x = nets[name]
    # float64 depthwise convolutions are slow on a CPU: EfficientNet runs on one 64-px image
    x = x[:1, :, 32:-32, 32:-32] if name == "efficientnet_lite0" else x[..., 16:-16, 16:-16]
    model, x = copy.deepcopy(model).double(), x.double()
    cam = C.CAM(model)(x, topk=3)  # batch of 2 images x 3 classes in one call
    fc = C.gap_linear_head(model)
    logits = cam.logits.gather(1, cam.targets)
    recon = cam.lowres.mean(dim=(-2, -1)) + fc.bias[cam.targets]
    assert ((recon - logits).abs() <= 1e-6 * logits.abs()).all()
    grad = C.GradCAM(model)(x, cam.targets)
    h, w = cam.lowres.shape[-2:]
    want = cam.lowres.clamp_min(0) / (h * w)
    assert (grad.lowres - want).abs().max() <= 1e-5 * want.abs().max()
    counter = C.GradCAM(model, counterfactual=True)(x, cam.targets)
    assert (counter.lowres - (-cam.lowres).clamp_min(0) / (h * w)).abs().max() \
        <= 1e-5 * want.abs().max()
    assert registered_hooks(model) == 0


def test_several_targets_equal_separate_calls(nets):
    model, x = nets["efficientnet_lite0"]
    both = C.GradCAM(model)(x, [[1, 2], [3, 4]])
    for col in range(2):
        one = xu.explain("gradcam", model, x, target=both.targets[:, col])
        torch.testing.assert_close(both.saliency[:, col], one.saliency, rtol=1e-4, atol=1e-6)
    cache = C.LayerCache.build(model, x, ["blocks.3", "bn2"], targets=both.targets)
    torch.testing.assert_close(cache.gradcam("bn2", 1), both.saliency[:, 1], rtol=1e-4,
                               atol=1e-6)
    early = C.GradCAM(model, "blocks.3")(x, both.targets[:, 0])
    torch.testing.assert_close(cache.gradcam("blocks.3", 0), early.saliency[:, 0], rtol=1e-4,
                               atol=1e-6)
    torch.testing.assert_close(cache.cam(0), C.CAM(model)(x, both.targets[:, 0]).saliency[:, 0],
                               rtol=1e-4, atol=1e-5)


def test_explain_registry_and_defaults(effnet, shapes_model):
    assert {"cam", "gradcam"} <= set(xu.methods())
    x = xu.preprocess(xu.load_sample("chelsea"), effnet, size=128)
    e = xu.explain("cam", effnet, x)
    assert e.saliency.shape == (1, 128, 128) and e.extras["layer"] == "bn2"
    assert int(e.target) == int(e.extras["logits"].argmax())
    assert C.default_layer(shapes_model) == "features.10"
    assert C.stage_layers(shapes_model) == ["features.1", "features.4", "features.7",
                                            "features.10"]
    with pytest.raises(IndexError, match="out of range"):
        xu.explain("gradcam", effnet, x, target=1000)
    with pytest.raises(ValueError, match="no layer 'bn3'"):
        xu.explain("gradcam", effnet, x, layer="bn3")


def test_shapes_vgg_cam_identity(shapes_model):
    from xai_utils.data import shapes

    model = copy.deepcopy(shapes_model).double()
    x = shapes.generate(4, seed=3).images.double()
    cam = C.CAM(model)(x, [[0, 1]] * 4)
    recon = cam.lowres.mean(dim=(-2, -1)) + model.classifier.bias[cam.targets]
    torch.testing.assert_close(recon, cam.logits.gather(1, cam.targets), rtol=1e-9, atol=1e-12)


def test_clear_errors_and_no_hooks_left(reference_nets):
    vgg = reference_nets["vgg16"][0]
    with pytest.raises(ValueError, match=r"not a global average pool.*3 linear layers"):
        C.CAM(vgg)
    assert C.default_layer(vgg) == "features.29"
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 64, 64)
    # the tutorial's layer: before BatchNorm, residual add and ReLU, so not the CAM layer
    with pytest.raises(ValueError, match="does not reproduce the logits"):
        C.CAM(resnet, "layer4.1.conv2")(x)
    assert registered_hooks(resnet) == 0
    wrong = C.CAM(resnet, "layer4.1.conv2", check=False)(x)
    assert wrong.saliency.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="256 channels"):
        C.CAM(resnet, "layer3")(x)
    with pytest.raises(ValueError, match="B x T"):
        C.GradCAM(resnet)(x, [[[1]]])
    with pytest.raises(TypeError, match="integer"):
        C.GradCAM(resnet)(x, 1.5)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.fixture(scope="module")
def reference_nets(effnet):
    torch.manual_seed(0)
    chelsea = xu.load_sample("chelsea")
    vgg = torchvision.models.vgg16().eval()
    resnet = torchvision.models.resnet18().eval()
    return {
        "vgg16": (vgg, "features.29", xu.preprocess(chelsea, vgg, size=112)),
        "resnet18": (resnet, "layer4", xu.preprocess(chelsea, resnet)),
        "efficientnet_lite0": (effnet, "bn2", xu.preprocess(chelsea, effnet)),
    }


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "efficientnet_lite0"])
def test_agrees_with_pytorch_grad_cam_and_captum(reference_nets, name):
    """Same model, layer, image and class for all three implementations.

    pytorch-grad-cam returns, per image, ReLU(map) min-max normalised to [0, 1] in NumPy and
    then resized with cv2.resize (bilinear, pixel centres at +0.5, the same convention as
    torch's `align_corners=False`) to the input size. We bring our raw map to that footing:
    ReLU (already applied), min-max over the low-res map, bilinear upsampling with
    align_corners=False, and compare at input resolution. Captum's LayerGradCam returns the
    low-res map; with relu_attributions=True it is compared with our low-res map directly.
    Pearson correlation is invariant to the remaining positive scale.
    """
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM as PGC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, layer, x = reference_nets[name]
    ours = C.GradCAM(model, layer)(x)
    target = int(ours.targets[0, 0])
    module = xu.get_layer(model, layer)
    with PGC(model=model, target_layers=[module]) as ref:
        theirs = torch.from_numpy(ref(input_tensor=x, targets=[ClassifierOutputTarget(target)]))
    low = ours.lowres[:, 0]
    lo, hi = low.amin(dim=(-2, -1), keepdim=True), low.amax(dim=(-2, -1), keepdim=True)
    ours_up = C.upsample(((low - lo) / (hi - lo + 1e-7))[:, None], x.shape[-2:])[:, 0]
    assert low.max() > 0, "an all-zero map would make the comparison meaningless"
    assert _pearson(ours_up, theirs) >= 0.999
    captum = LayerGradCam(model, module).attribute(x, target=target, relu_attributions=True)
    assert _pearson(low, captum[:, 0].detach()) >= 0.999
    assert registered_hooks(model) == 0


def test_last_conv_up_to_is_the_layer_one_step_too_early(effnet):
    """The tutorial's wrong layer on any model: the last convolution that runs by the end of
    the CAM layer, before the normalisation and activation the pool reads."""
    resnet = xu.load_model("resnet18", pretrained=False)
    assert C.last_conv_up_to(resnet, "layer4") == "layer4.1.conv2"
    assert C.last_conv_up_to(effnet, C.default_layer(effnet)) == "conv_head"
    assert C.last_conv_up_to(resnet, "layer1.0.conv1") == "conv1"
    with pytest.raises(ValueError, match="no layer 'layer9'"):
        C.last_conv_up_to(resnet, "layer9")
