import pytest
import torch
from torch import nn

from xai_utils.core.ops import gaussian_blur, total_variation
from xai_utils.evaluation import metrics


def _maps(h=40, w=40):
    return torch.zeros(1, h, w), torch.zeros(1, h, w, dtype=torch.bool)


def test_pointing_game_by_hand():
    sal, mask = _maps()
    mask[0, 10:20, 10:20] = True
    sal[0, 15, 15] = 1.0  # inside
    assert metrics.pointing_game(sal, mask).tolist() == [True]
    sal.zero_()
    sal[0, 15, 30] = 1.0  # 11 px right of the mask
    assert metrics.pointing_game(sal, mask, tolerance=15).tolist() == [True]
    assert metrics.pointing_game(sal, mask, tolerance=10).tolist() == [False]
    assert metrics.pointing_game(sal, mask, tolerance=0).tolist() == [False]
    sal.zero_()
    sal[0, 31, 31] = 1.0  # 12 px diagonally from the corner (19, 19): sqrt(288) = 17
    assert metrics.pointing_game(sal, mask, tolerance=16).tolist() == [False]
    assert metrics.pointing_game(sal, mask, tolerance=17).tolist() == [True]


def test_energy_in_mask_by_hand():
    sal = torch.tensor([[[1.0, 3.0], [-5.0, 0.0]]])
    mask = torch.tensor([[[True, False], [True, True]]])
    torch.testing.assert_close(metrics.energy_in_mask(sal, mask), torch.tensor([0.25]))


class CountingModel(nn.Module):
    """p(class 0) = fraction of pixels equal to 1 (a two-logit softmax made exact)."""

    def forward(self, x):
        frac = (x[:, 0] == 1).float().flatten(1).mean(1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([frac.log(), (1 - frac).log()], dim=1)


def test_deletion_and_insertion_auc_by_hand():
    x = torch.ones(2, 3, 8, 8)
    sal = torch.rand(2, 8, 8)
    target = torch.zeros(2, dtype=torch.long)
    # deleting k of n pixels leaves p = 1 - k/n: the curve is a line from 1 to 0, AUC 1/2
    auc = metrics.deletion_auc(CountingModel(), x, sal, target, steps=16, batch_size=7)
    torch.testing.assert_close(auc, torch.full((2,), 0.5), atol=1e-4, rtol=0)
    ins = metrics.insertion_auc(CountingModel(), x, sal, target, steps=16,
                                baseline=torch.zeros(()))
    torch.testing.assert_close(ins, torch.full((2,), 0.5), atol=1e-4, rtol=0)


def test_probability_curve_follows_saliency_order():
    x = torch.ones(1, 3, 2, 2)
    sal = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])

    class Pixel(nn.Module):  # p(class 0) = 1 when the top-left pixel is still 1
        def forward(self, x):
            p = (x[:, 0, 0, 0] == 1).float().clamp(1e-6, 1 - 1e-6)
            return torch.stack([p.log(), (1 - p).log()], 1)

    curve = metrics.probability_curve(Pixel(), x, torch.zeros_like(x), sal,
                                      torch.tensor([0]), steps=4)
    torch.testing.assert_close(curve, torch.tensor([[1.0, 0, 0, 0, 0]]), atol=1e-5, rtol=0)


def test_total_variation_and_area():
    m = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    torch.testing.assert_close(total_variation(m, beta=1), torch.tensor([1.0]))
    torch.testing.assert_close(total_variation(m * 2, beta=3), torch.tensor([8.0]))
    torch.testing.assert_close(metrics.area(m), torch.tensor([0.5]))


def test_blur_keeps_constants_and_shape():
    x = torch.full((2, 3, 20, 30), 0.3)
    y = gaussian_blur(x, sigma=4)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x)


def test_shape_mismatch_errors():
    with pytest.raises(ValueError, match="differ"):
        metrics.pointing_game(torch.zeros(1, 4, 4), torch.zeros(1, 5, 5))
