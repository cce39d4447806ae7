import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import morphology
from torch import nn

import xai_utils as xu
from xai_utils.methods import perturbation_cnn as pc


class Tiny(nn.Module):
    """A small deterministic conv net: 3 x 8 x 8 -> 4 classes (scaled head: confident)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(nn.functional.avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = Tiny().double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(8)
    return model


def seed_generator(x, weight, bias, nblocks, nlayers):
    """The seed's module, one image at a time: one nn.Conv2d reused, ReLU per block."""
    k = weight.shape[-1]
    conv = nn.Conv2d(3, 3, k, padding=k // 2).double()
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    xmin, dx = x.min(), (x - x.min()).max()
    y = x[None]
    for _ in range(nblocks):
        for _ in range(nlayers):
            y = conv(y)
        y = torch.relu(y)
    y = y - y.min()
    return (y / y.max() * dx + xmin)[0]


def test_grouped_generator_equals_seed_module_per_image():
    torch.manual_seed(1)
    x = torch.randn(3, 3, 12, 10, dtype=torch.float64)
    weight = torch.randn(3, 3, 3, 5, 5, dtype=torch.float64) * 0.2
    bias = torch.randn(3, 3, dtype=torch.float64) * 0.1
    out = pc.generate(x, weight, bias, nblocks=2, nlayers=3)
    for b in range(3):
        torch.testing.assert_close(out[b], seed_generator(x[b], weight[b], bias[b], 2, 3),
                                   rtol=1e-12, atol=1e-12)


def test_perturbed_range_equals_input_range():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64) * torch.tensor([1.0, 2, 3, 4]).view(4, 1,
                                                                                           1, 1)
    weight, bias = pc.init_generator(4, 3, seed=5, dtype=torch.float64)
    out = pc.generate(x, weight, bias)
    torch.testing.assert_close(out.flatten(1).amin(1), x.flatten(1).amin(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.flatten(1).amax(1), x.flatten(1).amax(1), rtol=0, atol=1e-12)


def test_init_like_conv2d_default():
    w, b = pc.init_generator(2, 5, seed=0)
    assert w.shape == (2, 3, 3, 5, 5) and b.shape == (2, 3)
    bound = 1 / np.sqrt(3 * 25)
    assert w.abs().max() <= bound and b.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.equal(w[0], w[1]) and torch.equal(b[0], b[1])
    w2, _ = pc.init_generator(1, 5, seed=0)
    assert torch.equal(w2[0], w[0])
    with pytest.raises(ValueError, match="odd"):
        pc.init_generator(1, 4)


def test_postprocess_hand_worked_and_border():
    x = torch.zeros(1, 3, 20, 20, dtype=torch.float64)
    x_pert = x.clone()
    x_pert[0, :, 10, 7] = 0.5  # channel-mean difference 0.5 -> 0.5 ** 6
    x_pert[0, :, 0, 0] = 3.0  # inside the 10 % border: removed
    x_pert[0, 1, 5, 5] = -1.5  # channel mean -0.5: the same |.|^6
    diff = pc.postprocess(x, x_pert, power=6, border=0.1, dilation=1)
    expected = torch.zeros(1, 20, 20, dtype=torch.float64)
    expected[0, 10, 7] = expected[0, 5, 5] = 0.5 ** 6
    torch.testing.assert_close(diff, expected)
    # 10 % of 20 px: rows/cols 0-1 and 18-19 are always zero before dilation
    torch.manual_seed(3)
    diff = pc.postprocess(torch.randn(2, 3, 20, 20), torch.randn(2, 3, 20, 20), dilation=1)
    assert (diff >= 0).all() and (diff[:, 2:18, 2:18] > 0).all()
    assert diff[:, :2].eq(0).all() and diff[:, 18:].eq(0).all()
    assert diff[:, :, :2].eq(0).all() and diff[:, :, 18:].eq(0).all()


def test_postprocess_224_border_band_and_dilation():
    torch.manual_seed(4)
    x, x_pert = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224)
    diff = pc.postprocess(x, x_pert)  # band int(22.4) = 22 px, then a 20 x 20 square
    assert (diff >= 0).all()
    band = torch.ones(224, 224, dtype=torch.bool)
    band[22 - 10:201 + 9, 22 - 10:201 + 9] = False  # spreads 10 px up/left, 9 down/right
    assert diff[:, band].eq(0).all() and (diff[:, ~band] > 0).all()


def test_dilation_matches_skimage_and_com_matches_scipy():
    torch.manual_seed(5)
    maps = torch.rand(3, 41, 36, dtype=torch.float64) ** 8
    for size in (20, 7, 4, 1):
        ours = pc.dilate(maps, size)
        for b in range(3):
            ref = morphology.dilation(maps[b].numpy(), np.ones((size, size)))
            np.testing.assert_array_equal(ours[b].numpy(), ref)
    com = pc.center_of_mass(maps)
    for b in range(3):
        np.testing.assert_allclose(com[b].numpy(), ndimage.center_of_mass(maps[b].numpy()),
                                   rtol=1e-12)
    spike = torch.zeros(1, 30, 30)
    spike[0, 20, 5] = 1.0  # row 20, col 5: (row, col), not (x, y)
    assert pc.center_of_mass(spike).tolist() == [[20.0, 5.0]]
    square = pc.dilate(spike, 20)[0].nonzero()
    # output i takes the max over inputs i-9 .. i+10: a spike spreads 10 px up/left, 9 down/right
    assert square[:, 0].min() == 10 and square[:, 0].max() == 29
    assert square[:, 1].min() == 0 and square[:, 1].max() == 14


def test_batch_equals_separate_runs(tiny):
    torch.manual_seed(6)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    batch = pc.optimize(tiny, x, target, steps=15, l1_coeff=[1.0, 0.5, 2.0], nblocks=2,
                        seed=11, snapshots=[10], progress=False)
    for b, l1 in enumerate([1.0, 0.5, 2.0]):
        one = pc.optimize(tiny, x[b:b + 1], target[b:b + 1], steps=15, l1_coeff=l1,
                          nblocks=2, seed=11, snapshots=[10], progress=False)
        for key in ("perturbed", "losses", "probs", "prob_after", "weight", "bias"):
            torch.testing.assert_close(batch[key][b:b + 1], one[key], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batch["snapshots"][10][b:b + 1], one["snapshots"][10])


def test_first_loss_is_equation_one_and_model_untouched(tiny):
    torch.manual_seed(7)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([1, 3])
    run = pc.optimize(tiny, x, target, steps=1, l1_coeff=0.3, nblocks=2, nlayers=3, seed=4,
                      progress=False)
    w, b = pc.init_generator(1, 3, seed=4, dtype=torch.float64)
    for i in range(2):
        xp = seed_generator(x[i], w[0], b[0], 2, 3)
        prob = tiny(xp[None]).softmax(1)[0, target[i]]
        expected = prob + 0.3 * (x[i] - xp).abs().mean()
        torch.testing.assert_close(run["losses"][i, 0], expected.detach())
    assert all(p.grad is None for p in tiny.parameters())


def test_short_run_drops_target_probability(tiny):
    torch.manual_seed(8)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    expl = xu.explain("perturbation_cnn", tiny, x, steps=30, lr=0.05, progress=False)
    before, after = expl.extras["prob_before"], expl.extras["prob_after"]
    assert (after < 0.01 * before).all(), (before, after)
    assert expl.saliency.shape == (4, 8, 8) and (expl.saliency >= 0).all()
    torch.testing.assert_close(expl.saliency, pc.postprocess(x, expl.extras["perturbed"]))
    torch.testing.assert_close(expl.extras["l1"],
                               (x - expl.extras["perturbed"]).abs().flatten(1).mean(1))
    assert expl.extras["losses"].shape == (4, 30)
    again = xu.explain("perturbation_cnn", tiny, x, steps=30, lr=0.05, progress=False)
    assert torch.equal(again.saliency, expl.saliency)  # same seed, same result


def test_shapes_model_probability_drops(shapes_model):
    from xai_utils.data import shapes

    batch = shapes.generate(2, seed=3)
    expl = xu.explain("perturbation_cnn", shapes_model, batch.images, steps=20, lr=0.05,
                      nblocks=2, progress=False)
    assert (expl.extras["prob_after"] < 0.5 * expl.extras["prob_before"]).all()
    assert (expl.extras["losses"][:, -1] < expl.extras["losses"][:, 0]).all()
    assert expl.extras["perturbed"].amin() >= 0 and expl.extras["perturbed"].amax() <= 1


def test_effnet_short_run(effnet):
    x = xu.preprocess(xu.load_sample("chelsea"), effnet)
    expl = xu.explain("perturbation_cnn", effnet, x, steps=8, progress=False)
    xp = expl.extras["perturbed"]
    torch.testing.assert_close(xp.amin(), x.amin(), rtol=0, atol=1e-5)
    torch.testing.assert_close(xp.amax(), x.amax(), rtol=0, atol=1e-5)
    # the first generator already destroys the class; the steps pull G(x) back towards x
    assert expl.extras["probs"].amax() < 0.01 * expl.extras["prob_before"][0]
    assert expl.extras["dists"][0, -1] < expl.extras["dists"][0, 0]
    assert expl.extras["losses"][0, -1] < expl.extras["losses"][0, 0]
    com = expl.extras["center_of_mass"][0]
    assert (com > 22).all() and (com < 201).all()


def test_bad_inputs(tiny):
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="steps"):
        xu.explain("perturbation_cnn", tiny, x, steps=0)
    with pytest.raises(ValueError, match="l1_coeff"):
        xu.explain("perturbation_cnn", tiny, x, steps=1, l1_coeff=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="odd"):
        xu.explain("perturbation_cnn", tiny, x, steps=1, kernel_size=2)
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        pc.generate(torch.randn(1, 1, 8, 8), *pc.init_generator(1))


def test_image_kind_names_degenerate_images():
    img = torch.rand(5, 8, 8, 3)
    img[0] = 0.0                                   # black
    img[1] = 0.4                                   # one grey everywhere
    img[2, ..., 1:] = 0.0                          # red only
    img[3, ..., 2] = 0.0                           # no blue
    assert pc.image_kind(img) == ["black", "near-constant", "red only", "no blue",
                                    "full colour"]


def test_brightness_correlation_by_construction():
    x = torch.linspace(-1, 1, 100).view(1, 1, 10, 10).expand(2, 3, 10, 10).contiguous()
    darker = -torch.ones_like(x)                   # G(x) black: change grows with brightness
    flipped = x.flip(-1).flip(-2)                  # change largest at both ends
    r = pc.brightness_correlation(x, torch.cat([darker[:1], flipped[:1]]), border=0.0)
    assert float(r[0]) == pytest.approx(1.0)
    assert abs(float(r[1])) < 0.1
