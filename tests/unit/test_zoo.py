"""The zoo contract: every registered method on 14 architectures of the two zoos (random
weights, small inputs) gives a finite B x H x W map or refuses with `MethodNotApplicable`
naming the layer or head and the reason; never a crash inside torch, never a map from a
wrong layer (for transformers the Grad-CAM layer is a late block, reshaped to the patch
grid). Each model is built once per module; each (method, model) cell runs once.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch

import xai_utils as xu
from xai_utils.evaluation.harness import method_settings
from xai_utils.models.zoo import CONTRACT_MODELS

STEPS = 3
SEED = 7
NAMES = [name for name, _, _ in CONTRACT_MODELS]
SPECS = {name: (kwargs, side) for name, kwargs, side in CONTRACT_MODELS}
# the last block (or its first norm) of each transformer, and DenseNet's final features
LATE = {
    "torchvision:vit_b_16": r"encoder\.layers\.encoder_layer_11(\.ln_1)?",
    "torchvision:swin_t": r"features\.7\.1",
    "timm:vit_tiny_patch16_224": r"blocks\.11(\.norm1)?",
    "timm:deit_tiny_distilled_patch16_224": r"blocks\.11(\.norm1)?",
    "torchvision:densenet121": r"features\.norm5",
}
# cells that must work (the rest may refuse, with a clear message)
MUST_WORK = {"gradient", "gradcam", "lrp", "occlusion", "extremal_perturbation",
             "meaningful_perturbation", "perturbation_cnn"}
CAM_WORKS = {"torchvision:resnet18", "torchvision:densenet121", "torchvision:efficientnet_b0",
             "torchvision:regnet_y_400mf", "torchvision:inception_v3", "torchvision:swin_t",
             "timm:resnet50"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_MODELS: dict[str, torch.nn.Module] = {}
_CELLS: dict[tuple[str, str], object] = {}


def _calibrate(model: torch.nn.Module, side: int) -> None:
    """Make a random-weight model's logits depend on its input: BatchNorm statistics from
    a batch of random images (random init lets activations vanish through MobileNet and
    EfficientNet: logits constant to 1e-10) and a random head where the zoo zeroes it
    (torchvision's ViT), so an all-zero map means a broken method, not a dead model."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
        m.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.02)
    pixels = torch.rand(8, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(xu.input_spec(model).normalize(pixels))
    for m in norms:
        m.momentum = 0.1
        m.eval()


def _model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        torch.manual_seed(0)
        kwargs, side = SPECS[name]
        model = xu.load_model(name, pretrained=False, device_="cpu", **kwargs)
        _calibrate(model, side)
        _MODELS[name] = model
    return _MODELS[name]


def _batch(name: str) -> torch.Tensor:
    side = SPECS[name][1]
    pixels = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(3))
    return xu.input_spec(_model(name)).normalize(pixels)


def _cell(method: str, name: str):
    """The explanation of a batch of 2, or the `MethodNotApplicable` it raised."""
    if (method, name) not in _CELLS:
        model, side = _model(name), SPECS[name][1]
        params = dict(method_settings(model, steps=STEPS)[method])
        info = xu.method_info(method)
        if method == "occlusion":
            params.update(window=side // 2, stride=side // 2)
        elif info.probe:  # the budget (masks, samples, path points) cut to the minimum
            params.update(info.probe(side))
        if xu.method_info(method).stochastic:
            params["seed"] = SEED
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _CELLS[method, name] = xu.explain(method, model, _batch(name), **params)
        except xu.MethodNotApplicable as exc:
            _CELLS[method, name] = exc
    return _CELLS[method, name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("method", xu.methods())
def test_finite_map_or_clear_refusal(method, name):
    result = _cell(method, name)
    if isinstance(result, xu.MethodNotApplicable):
        assert method not in MUST_WORK, f"{method} refused {name}: {result}"
        assert not (method == "cam" and name in CAM_WORKS), f"CAM refused {name}: {result}"
        message = str(result)
        assert re.search(r"layer '[\w.]+'|head|class token|linear layer|nn\.ReLU", message), message
        return
    side = SPECS[name][1]
    assert result.saliency.shape == (2, side, side)
    assert torch.isfinite(result.saliency).all()
    if method != "gradcam":  # ReLU-clipped: all zero when every channel votes against
        assert result.saliency.flatten(1).abs().amax(1).gt(0).all(), "an all-zero map"


@pytest.mark.parametrize("name", sorted(LATE))
def test_gradcam_reads_a_late_block(name):
    result = _cell("gradcam", name)
    assert not isinstance(result, Exception), result
    layer = result.extras["layer"]
    assert re.fullmatch(LATE[name], layer), layer
    low = result.extras["lowres"]
    side = SPECS[name][1]
    # the patch grid (16 px patches for ViT / DeiT, 32 px for the last Swin stage and
    # DenseNet's final features): the class tokens are gone, the tokens are a map
    stride = 32 if name in ("torchvision:swin_t", "torchvision:densenet121") else 16
    assert low.shape[-2:] == (side // stride, side // stride)


def test_cam_on_densenet_and_swin_reproduces_logits():
    """CAM's own identity check (mean CAM + bias = logit) passed for these heads: DenseNet's
    functional pool after norm5 + ReLU, Swin's channel-last map after its LayerNorm."""
    for name, layer in (("torchvision:densenet121", "features.norm5"),
                        ("torchvision:swin_t", "norm")):
        result = _cell("cam", name)
        assert not isinstance(result, Exception), result
        assert result.extras["layer"] == layer


def test_cam_refusal_names_what_is_in_the_way():
    assert "LayerNorm2d" in str(_cell("cam", "timm:convnext_nano"))
    assert "class token" in str(_cell("cam", "timm:deit_tiny_distilled_patch16_224"))
    assert "not a global average pool" in str(_cell("cam", "torchvision:vgg11_bn"))
