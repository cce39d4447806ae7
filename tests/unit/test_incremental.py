"""Incremental inference for occlusion: the same scores as full forward passes."""

import pytest
import torch
from captum.attr import Occlusion
from torch import nn

import xai_utils as xu
from xai_utils.methods import occlusion as occlusion_method
from xai_utils.methods.occlusion import incremental


class Features(nn.Module):
    """A VGG-style model: forward = head(features(x))."""

    def __init__(self, features: nn.Sequential, channels: int, classes: int = 5) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(channels, classes))

    def forward(self, x):
        return self.head(self.features(x))


def vgg_like() -> nn.Module:
    """Padded max-pooling, a strided convolution, average pooling, BatchNorm, a 5x5 kernel,
    and a global layer after the local ones (where incremental inference stops)."""
    torch.manual_seed(3)
    feats = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6),
        nn.MaxPool2d(3, stride=2, padding=1), nn.LeakyReLU(0.2),  # pools negative values
        nn.Conv2d(6, 8, 5, stride=2, padding=2), nn.LeakyReLU(0.1),
        nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(3), nn.Conv2d(8, 7, 1))
    model = Features(feats, 7).double()
    bn = feats[1]
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    return model.eval()


def full_scores(model, x, window, stride, baseline):
    return xu.explain("occlusion", model, x, window=window, stride=stride, baseline=baseline,
                      output="logit", incremental=False)


@pytest.mark.parametrize("window,stride,baseline", [(5, 3, 0.0), ((7, 4), (3, 5), 0.5),
                                                    (9, 9, "mean"), ((26, 22), 8, 0.0)])
def test_equals_full_forward_passes(window, stride, baseline, monkeypatch):
    # exactness for every window size, also where full passes would be chosen as cheaper
    monkeypatch.setattr(occlusion_method, "MAX_INCREMENTAL_COST", 1.01)
    model = vgg_like()
    x = torch.randn(2, 3, 37, 30, dtype=torch.float64)  # windows cut at both far edges
    assert incremental.plan(model, x, torch.zeros_like(x), (7, 4)) is not None
    ours = xu.explain("occlusion", model, x, window=window, stride=stride, baseline=baseline,
                      output="logit", batch_size=13)
    ref = full_scores(model, x, window, stride, baseline)
    assert ours.extras["incremental"] and not ref.extras["incremental"]
    assert torch.equal(ours.target, ref.target)
    torch.testing.assert_close(ours.extras["drops"], ref.extras["drops"], rtol=0, atol=1e-12)
    assert ours.extras["drops"].abs().max() > 1e-3            # the windows do change scores


def test_shapes_model_agrees_with_captum(shapes_model):
    x = xu.data.shapes.generate(2, seed=1).images
    t = shapes_model(x).argmax(1)
    assert incremental.plan(shapes_model, x, torch.zeros_like(x), (16, 16)) is not None
    ours = xu.explain("occlusion", shapes_model, x, t, window=16, stride=8, output="logit")
    assert ours.extras["incremental"]
    ref = Occlusion(shapes_model).attribute(x, sliding_window_shapes=(3, 16, 16),
                                            strides=(3, 8, 8), baselines=0.0, target=t,
                                            perturbations_per_eval=32)[:, 0]
    assert (ours.saliency - ref).norm() / ref.norm() < 1e-5
    assert [n for n, _ in shapes_model.named_children()] == ["features", "pool", "classifier"]


class Twice(Features):
    """`features` applied twice, once to the mirrored input (a non-local step)."""

    def forward(self, x):
        return self.head(self.features(x) + self.features(x.flip(3)))


class Branching(nn.Module):
    """Data-dependent control flow: cannot be traced."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x) if x.mean() > 0 else -self.net(x)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_residual_networks_equal_full_passes(name, effnet):
    """'Same'-padded strided convolutions, depthwise convolutions, residual additions,
    max-pooling and downsampling branches."""
    model = effnet if name == "efficientnet_lite0" else xu.load_model(name, pretrained=False)
    torch.manual_seed(4)
    x = torch.randn(1, 3, 96, 80)
    ours = xu.explain("occlusion", model, x, window=12, stride=10, output="logit")
    ref = full_scores(model, x, 12, 10, 0.0)
    assert ours.extras["incremental"]
    scale = ref.extras["drops"].abs().max()
    assert scale > 1e-3
    torch.testing.assert_close(ours.extras["drops"], ref.extras["drops"], rtol=0,
                               atol=1e-4 * scale)


def test_non_local_steps_and_fallbacks():
    x = torch.randn(1, 3, 16, 16)
    base = torch.zeros_like(x)
    twice = Twice(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()), 4).eval()
    e = xu.explain("occlusion", twice, x, window=4, stride=4, output="logit")
    assert e.extras["incremental"]
    torch.testing.assert_close(e.saliency, full_scores(twice, x, 4, 4, 0.0).saliency)
    assert incremental.plan(Branching().eval(), x, base, (4, 4)) is None
    model = vgg_like().float()
    assert incremental.plan(model.train(), x, base, (4, 4)) is None
    e = xu.explain("occlusion", Branching().eval(), x, window=4, stride=4, output="logit")
    assert not e.extras["incremental"]


def test_falls_back_where_patches_end_early():
    """A LayerNorm over channels right after the stem ends every patch (ConvNeXt's layout):
    a window would cost a whole forward pass, so full passes run instead, without the trace
    (cost 1) where the model has a LayerNorm; with the trace the estimate says so too."""

    class ChannelNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.norm = nn.Conv2d(3, 8, 4, 4), nn.LayerNorm(8)
            self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(16, 5))

        def forward(self, x):
            return self.body(self.norm(self.stem(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))

    model = ChannelNorm().eval()
    x = torch.randn(1, 3, 32, 32)
    e = xu.explain("occlusion", model, x, window=8, stride=8, output="logit")
    assert e.extras["incremental_cost"] > 0.9 and not e.extras["incremental"]
    traced = incremental.plan(model, x, torch.zeros_like(x), (8, 8))
    windows = torch.arange(16)
    assert traced.prepare(windows // 4 * 8, windows % 4 * 8) > 0.9
    torch.testing.assert_close(e.saliency, full_scores(model, x, 8, 8, 0.0).saliency)
    vgg = xu.explain("occlusion", vgg_like().float().eval(), x, window=8, stride=8)
    assert vgg.extras["incremental"] and vgg.extras["incremental_cost"] < 0.9
