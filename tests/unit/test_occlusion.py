"""Sliding-window occlusion (Zeiler & Fergus 2014) registered as `occlusion`."""

import pytest
import torch
from captum.attr import Occlusion
from tiny_nets import two_conv_net
from torch import nn

import xai_utils as xu
from xai_utils.methods.occlusion import window_masks


def test_window_positions_match_captum_rule():
    m = window_masks(10, 7, (4, 3), (3, 2))
    # rows: ceil((10-4)/3)+1 = 3 starts (0,3,6); cols: ceil((7-3)/2)+1 = 3 starts (0,2,4)
    assert m.shape == (9, 10, 7)
    assert m[0, :4, :3].all() and m[0].sum() == 12
    assert m[-1, 6:, 4:].all() and m[-1].sum() == 12
    m = window_masks(10, 10, 4, 4)                      # last window cut at the edge
    assert m.shape[0] == 9 and m[-1].sum() == 2 * 2
    with pytest.raises(ValueError):
        window_masks(10, 10, 12, 2)


def test_linear_model_drop_is_sum_of_w_times_x_minus_baseline():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([1, 2])
    e = xu.explain("occlusion", lin, x, target, window=4, stride=2, baseline=0.25,
                   output="logit", batch_size=7)
    w = lin[1].weight.view(4, 3, 8, 8)
    masks = window_masks(8, 8, 4, 2)
    contrib = (w[target] * (x - 0.25)).sum(1)                       # B x H x W
    expect = (contrib[:, None] * masks).flatten(2).sum(2)           # B x K
    assert torch.allclose(e.extras["drops"].flatten(1), expect, atol=1e-12)
    cover = masks.sum(0)
    sal = (expect[:, :, None, None] * masks).sum(1) / cover
    assert torch.allclose(e.saliency, sal, atol=1e-12)


def small_net() -> nn.Module:
    return two_conv_net(classes=5, seed=1)


@pytest.mark.parametrize("window,stride,baseline", [(5, 3, 0.0), ((6, 4), (2, 3), 0.5)])
def test_agrees_with_captum(window, stride, baseline):
    net = small_net()
    x = torch.randn(3, 3, 21, 18, dtype=torch.float64)
    t = torch.tensor([0, 3, 4])
    ours = xu.explain("occlusion", net, x, t, window=window, stride=stride,
                      baseline=baseline, output="logit", batch_size=50).saliency
    w = (window, window) if isinstance(window, int) else window
    s = (stride, stride) if isinstance(stride, int) else stride
    ref = Occlusion(net).attribute(x, sliding_window_shapes=(3, *w), strides=(3, *s),
                                   baselines=baseline, target=t, perturbations_per_eval=16)
    assert torch.allclose(ref[:, 0], ref[:, 2])
    rel = (ours - ref[:, 0]).norm() / ref.norm()
    assert rel < 1e-6


def test_batchnorm_merged_for_the_forwards_and_restored():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).double()
    bn = net[1]
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-1, 1)
    net.eval()
    params = [id(p) for p in net.parameters()]
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    t = torch.tensor([1, 3])
    e = xu.explain("occlusion", net, x, t, window=4, stride=4, output="logit")
    assert torch.allclose(e.extras["score"], net(x)[[0, 1], t], rtol=0, atol=1e-12)
    ref = Occlusion(net).attribute(x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4),
                                   target=t)[:, 0]
    assert (e.saliency - ref).norm() / ref.norm() < 1e-6
    assert net[1] is bn and [id(p) for p in net.parameters()] == params
    net.train()  # batch statistics cannot be merged: the model runs as it is
    xu.explain("occlusion", net, x, t, window=6, stride=6)
    assert net[1] is bn and bn.training


def test_batch_size_and_probability_output():
    net = small_net()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    a = xu.explain("occlusion", net, x, window=4, stride=4, batch_size=3)
    b = xu.explain("occlusion", net, x, window=4, stride=4, batch_size=1000)
    assert torch.allclose(a.saliency, b.saliency, atol=1e-12)
    p = net(x).softmax(1).gather(1, a.target[:, None])[:, 0]
    assert torch.allclose(a.extras["score"], p)
    # stride == window: every pixel's saliency is the drop of its one window
    assert torch.allclose(a.saliency[:, :4, :4], a.extras["drops"][:, 0, 0, None, None]
                          .expand(-1, 4, 4))
    mean = xu.explain("occlusion", net, x, window=16, stride=16, baseline="mean")
    filled = x.mean((2, 3), keepdim=True).expand_as(x)
    drop = mean.extras["score"] - net(filled).softmax(1).gather(1, mean.target[:, None])[:, 0]
    assert torch.allclose(mean.saliency[:, 0, 0], drop)
    with pytest.raises(ValueError):
        xu.explain("occlusion", net, x, output="loss")


def test_real_nets():
    sm = xu.load_model("shapes_vgg")
    batch = xu.data.shapes.generate(2, seed=0)
    e = xu.explain("occlusion", sm, batch.images, window=28, stride=28)
    assert e.saliency.shape == (2, 112, 112) and e.extras["drops"].shape == (2, 4, 4)
    assert torch.isfinite(e.saliency).all()
    r18 = xu.load_model("resnet18", pretrained=False)
    x = torch.randn(1, 3, 64, 64)
    e = xu.explain("occlusion", r18, x, window=32, stride=32, output="logit")
    assert e.extras["drops"].shape == (1, 2, 2) and torch.isfinite(e.saliency).all()
