"""The grid pointing game (Rao et al. 2022): cell masks, the localisation score's extremes,
and grids that hold each confident photo in its cell with that photo's class as target."""

import numpy as np
import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.evaluation.grid import cell_masks, localisation, make_grids, peak_in_cell


def test_localisation_is_the_cells_share_of_positive_attribution():
    masks = cell_masks(6, 8)
    assert masks.sum((1, 2)).tolist() == [12] * 4 and masks.sum(0).eq(1).all()
    maps = torch.stack([masks[2].float(), torch.ones(6, 8), -masks[1].float() + masks[3]])
    scores = localisation(maps, torch.tensor([2, 0, 1]))
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.25, 0.0]))
    assert peak_in_cell(maps[[0, 2]], torch.tensor([2, 3])).tolist() == [True, True]
    assert peak_in_cell(maps[[0]], torch.tensor([1])).tolist() == [False]


def _colour_model():
    """Classes 0-2: red, green, blue; class 3: grey (a constant logit)."""
    linear = nn.Linear(3, 4)
    with torch.no_grad():
        linear.weight.copy_(torch.cat([torch.eye(3), torch.zeros(1, 3)]) * 10)
        linear.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 6.0]))
    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), linear)
    return xu.wrap(net, mean=(0.0,) * 3, std=(1.0,) * 3, input_size=16,
                   class_names=["red", "green", "blue", "grey"], crop_pct=1.0)


def test_grids_hold_each_photo_in_its_cell_with_its_own_class():
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
               "grey": (77, 77, 77), "pale": (120, 100, 110)}  # pale: class 3 again, less sure
    photos = {k: np.full((20, 24, 3), v, np.uint8) for k, v in colours.items()}
    grids = make_grids(_colour_model(), photos, n_grids=3, min_probability=0.5)
    assert grids.names == ["red", "green", "blue", "grey"] and len(grids.images) == 1
    assert grids.images.shape == (1, 3, 32, 32)
    assert sorted(grids.targets[0].tolist()) == [0, 1, 2, 3]
    for cell, mask in enumerate(cell_masks(32, 32)):
        photo = grids.names[int(grids.members[0, cell])]
        pixels = grids.images[0][:, mask].T * 255
        assert torch.allclose(pixels, torch.tensor(colours[photo]).float(), atol=0.5)
        assert xu.class_name(_colour_model(), int(grids.targets[0, cell])) == photo
    with pytest.raises(ValueError, match="4 photos of different classes"):
        make_grids(_colour_model(), {k: photos[k] for k in ("red", "grey", "pale")}, 1)


def test_disconnected_cells_only_see_their_own_pixels():
    """DiFull: each cell's logits equal the model's on that cell alone, and no other cell's
    pixels have any gradient."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=5).eval()
    net.xai = xu.ModelInfo("r", (0.0,) * 3, (1.0,) * 3, 32, 1.0, "bilinear",
                                       tuple("abcde"))
    grid = xu.evaluation.grid.Disconnected(net)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = grid(x)
    assert out.shape == (2, 20) and grid.xai.num_classes == 20
    torch.testing.assert_close(out[:, 15:], net(x[:, :, 32:, 32:]), rtol=1e-4, atol=1e-5)
    (g,) = torch.autograd.grad(out[0, 5 + 2], x)  # cell 1 (top right), class c
    masks = cell_masks(64, 64)
    assert g[0][:, masks[1]].abs().sum() > 0 and not g[0][:, ~masks[1]].any()
    assert not g[1].any()
    # LRP's pixel rule reaches the first convolution through the tiles; nothing leaks
    net.eval()
    relevance = xu.explain("lrp", grid, torch.rand_like(x.detach()), torch.tensor([7, 19]),
                           composite="epsilon_gamma_box").extras["relevance"]
    assert relevance[0][:, masks[1]].abs().sum() > 0 and not relevance[0][:, ~masks[1]].any()
    assert not relevance[1][:, ~masks[3]].any()


def test_summarise_resamples_whole_grids():
    """The interval resamples grids, not maps: two grids whose four maps agree within each
    grid give resampled means of 0.1, 0.5 or 0.9 only, so the interval spans both grids
    (eight maps taken as independent would give a narrower one)."""
    import numpy as np

    from xai_utils.evaluation.grid import summarise

    s = summarise(np.array([0.1] * 4 + [0.9] * 4))
    assert s["mean"] == pytest.approx(0.5)
    assert (s["low"], s["high"]) == (pytest.approx(0.1), pytest.approx(0.9))
