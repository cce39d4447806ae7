"""Models by zoo name, `xu.wrap` for a user's own module, the `output=` selector, layer
layouts (tokens, channel-last) and the refusals that name the layer and the reason."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.core.outputs import OutputSelector, select_output
from xai_utils.methods.cam.layers import LayerSpec, to_maps
from xai_utils.methods.lrp import input_bounds
from xai_utils.models import zoo


class Net(nn.Module):
    """Conv, ReLU, global average pool, linear; returns what `kind` says."""

    def __init__(self, kind: str = "tensor") -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x):
        logits = self.fc(self.pool(self.features(x)).flatten(1))
        if self.kind == "tuple":
            return logits, logits * 0
        if self.kind == "dict":
            return {"aux": logits * 0, "logits": logits}
        if self.kind == "object":
            return namedtuple("Out", "loss logits")(None, logits)
        return logits


def test_wrap_attaches_the_statistics_that_input_spec_returns():
    model = Net()
    wrapped = xu.wrap(model, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32,
                      class_names=["a", "b", "c"])
    assert wrapped is model and not model.training
    spec = xu.input_spec(wrapped)
    assert spec.low.flatten().tolist() == [-2.0] * 3 and spec.high.flatten().tolist() == [2.0] * 3
    assert wrapped.xai.input_size == 32 and xu.class_name(wrapped, 1) == "b"
    low, high = input_bounds(wrapped)
    assert low.flatten().tolist() == [-2.0] * 3


@pytest.mark.parametrize("kind", ["tuple", "dict", "object"])
def test_output_selector_default_picks_the_logits(kind):
    torch.manual_seed(0)
    model = Net(kind)
    wrapped = xu.wrap(model, input_size=16)
    assert isinstance(wrapped, OutputSelector) and wrapped.xai.input_size == 16
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(wrapped(x), Net.forward(model, x) if kind == "tensor" else
                               select_output(model(x)))
    assert wrapped(x).abs().sum() > 0  # not the zeroed auxiliary output
    expl = xu.explain("gradcam", wrapped, x)
    assert expl.extras["layer"] == "model.features.1"  # the default layer, prefixed


def test_output_selector_by_index_key_and_callable():
    out = {"aux": torch.zeros(1), "main": torch.ones(1)}
    assert select_output(out, "main").item() == 1
    assert select_output((torch.zeros(1), torch.ones(1)), 1).item() == 1
    assert select_output(out, lambda o: o["main"] * 2).item() == 2
    with pytest.raises(KeyError, match="keys"):
        select_output(out, "logit")


def test_lrp_without_preprocessing_info_uses_the_batch_with_a_warning():
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.rand(2, 3, 8, 8) * 10 - 5  # outside the ImageNet defaults' range
    with pytest.warns(UserWarning, match="no preprocessing"):
        expl = xu.explain("lrp", model, x)
    assert torch.isfinite(expl.saliency).all()
    with pytest.warns(UserWarning):
        low, high = input_bounds(model, x)
    assert low.shape == (2, 3, 1, 1) and (low <= x.amin((2, 3), keepdim=True)).all()
    assert (high >= x.amax((2, 3), keepdim=True)).all()


def test_tokens_and_channel_last_become_maps():
    tokens = torch.arange(6 * 4.0).view(1, 6, 4)  # 2 prefix tokens + a 2 x 2 grid, K = 4
    maps = to_maps(tokens, 1, "t", (32, 32))
    assert maps.shape == (1, 4, 2, 2)
    assert torch.equal(maps[0, :, 0, 1], tokens[0, 3])  # token 3 = grid cell (0, 1)
    nhwc = torch.rand(1, 2, 2, 16)
    assert torch.equal(to_maps(nhwc, 1, "s", (64, 64))[0, :, 1, 0], nhwc[0, 1, 0])
    relu = to_maps(torch.randn(1, 4, 2, 2), 1, "d", (8, 8), LayerSpec("d", relu=True))
    assert (relu >= 0).all()


def test_a_layer_that_is_not_a_map_is_refused_by_name():
    model = xu.load_model("timm:vit_tiny_patch16_224", pretrained=False, device_="cpu",
                          img_size=32)
    x = xu.input_spec(model).normalize(torch.rand(1, 3, 32, 32))
    with pytest.raises(xu.MethodNotApplicable,
                       match=r"layer 'blocks.1.attn.k_norm' outputs 3 x 5 x 64.*neither"):
        xu.explain("gradcam", model, x, layer="blocks.1.attn.k_norm")
    with pytest.raises(xu.MethodNotApplicable, match=r"layer 'blocks.11'.*gradients at its "
                                                     r"patch tokens are zero"):
        xu.explain("gradcam", model, x, layer="blocks.11")


def test_zoo_names_carry_the_zoo_metadata():
    model = xu.load_model("timm:convnext_nano", pretrained=False, device_="cpu")
    assert model.xai.crop_pct == 0.95 and model.xai.interpolation == "bicubic"
    assert model.xai.num_classes == 1000
    tv = xu.load_model("torchvision:inception_v3", pretrained=False, device_="cpu",
                       init_weights=False)
    assert tv.xai.input_size == 299 and abs(tv.xai.crop_pct - 299 / 342) < 1e-9
    assert xu.load_model("mobilenet_v3_small", pretrained=False).xai.name == \
        "torchvision:mobilenet_v3_small"
    with pytest.raises(ValueError, match="Did you mean"):
        xu.load_model("timm:convnext_nanoo", pretrained=False)


def test_pretrained_offline_names_the_download(monkeypatch):
    monkeypatch.setattr(zoo, "_reachable", lambda url: False)
    monkeypatch.setattr(zoo, "_timm_cached", lambda cfg: False)
    with pytest.raises(xu.WeightsUnavailable, match=r"huggingface\.co/timm/.*pretrained=False"):
        xu.load_model("timm:resnet18.a1_in1k", pretrained=True)
    monkeypatch.setattr(zoo.os.path, "exists", lambda path: False)
    with pytest.raises(xu.WeightsUnavailable, match=r"download\.pytorch\.org.*pretrained=False"):
        xu.load_model("torchvision:resnet18", pretrained=True)
