import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.core.ops import gaussian_blur
from xai_utils.methods import extremal as ep


def test_pyramid_levels_and_interpolation():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20, dtype=torch.float64)
    pyr = ep.blur_pyramid(x, levels=3, max_blur=4.0)
    assert torch.equal(pyr[:, 2], x)
    torch.testing.assert_close(pyr[:, 1], gaussian_blur(x, 2.0))
    ones = torch.ones(2, 1, 20, 20, dtype=torch.float64)
    assert torch.equal(ep.apply_pyramid(pyr, ones), x)
    torch.testing.assert_close(ep.apply_pyramid(pyr, 0 * ones), pyr[:, 0])
    torch.testing.assert_close(ep.apply_pyramid(pyr, 0.5 * ones), pyr[:, 1])
    # a quarter of the way: halfway between level 0 and level 1
    torch.testing.assert_close(ep.apply_pyramid(pyr, 0.25 * ones), (pyr[:, 0] + pyr[:, 1]) / 2)


def test_mask_generator_bounds_and_smoothness():
    gen = ep.SmoothMaskGenerator((30, 30), step=5, sigma=10.0, dtype=torch.float64)
    assert gen.shape_in == (6, 6) and gen.weight.shape == (1, 49, 30, 30)
    zero = gen(torch.zeros(1, 1, 6, 6, dtype=torch.float64))
    assert torch.equal(zero, torch.zeros_like(zero))
    one = gen(torch.ones(1, 1, 6, 6, dtype=torch.float64))
    assert one.min() > 0.9 and one.max() <= 1
    spot = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    spot[..., 3, 3] = 1
    m = gen(spot)[0, 0]
    # a flat top of radius sigma / 2 around the node's centre (17, 17), decaying outside
    assert (m[13:22, 17] > 0.99 * m.max()).all() and (m[17, 13:22] > 0.99 * m.max()).all()
    assert m[17, 17] > 0.5 and m[0, 0] < 0.05 * m[17, 17]


def test_mask_generator_chunks_equal_one_mask_at_a_time():
    gen = ep.SmoothMaskGenerator((112, 112), dtype=torch.float64)
    per = 2**22 // gen.weight.numel()
    assert 1 < per < 7  # 7 masks are built in chunks on a CPU
    params = torch.rand(7, 1, *gen.shape_in, dtype=torch.float64, requires_grad=True)
    masks = gen(params)
    (masks * torch.arange(7.0, dtype=torch.float64)[:, None, None, None]).sum().backward()
    for i in range(7):
        one = params[i:i + 1].detach().requires_grad_(True)
        single = gen(one)
        assert torch.equal(masks[i:i + 1], single)
        (single * i).sum().backward()
        assert torch.equal(params.grad[i:i + 1], one.grad)


def test_mask_generator_margin():
    plain = ep.SmoothMaskGenerator((30, 30), step=5, sigma=10.0, dtype=torch.float64)
    gen = ep.SmoothMaskGenerator((30, 30), step=5, sigma=10.0, margin=10, dtype=torch.float64)
    assert gen.shape_in == (6, 6) and gen.shape_out == (50, 50)
    torch.manual_seed(0)
    params = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    full = gen(params)
    assert full.shape == (2, 1, 50, 50)
    torch.testing.assert_close(gen.crop(full), plain(params), rtol=0, atol=1e-12)
    # with the margin, a parameter at the corner or an edge spreads as much mask as one
    # inside (without it: 41 % and 64 %), so the area penalty pulls all of them alike
    sums = []
    for i, j in [(0, 0), (0, 3), (3, 3)]:
        spot = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
        spot[..., i, j] = 1
        sums.append(gen(spot).sum())
    assert sums[0] > 0.95 * sums[2] and sums[1] > 0.95 * sums[2]


class Blind(nn.Module):
    """Scores that ignore the input: only the area penalty shapes the mask."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3, dtype=torch.float64))

    def forward(self, x):
        return self.bias.expand(len(x), 3) + 0 * x.sum((1, 2, 3))[:, None]


def test_mask_not_drawn_to_the_border():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    expl = xu.explain("extremal_perturbation", Blind(), x, target=0, areas=[0.1, 0.3],
                      steps=100, step=4, sigma=6.0, progress=False)
    for m in expl.extras["masks"][0]:
        inner = m[6:-6, 6:-6]
        frame = (m.sum() - inner.sum()) / (m.numel() - inner.numel())
        assert frame < 0.25 * inner.mean()
        assert m[:4, :4].max() < 0.05


def test_clamp_keeps_gradient_at_bounds():
    m = torch.tensor([0.0, 0.5, 1.0, 1.5], requires_grad=True)
    ep.clamp_unit(m).sum().backward()
    assert m.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


def test_area_reference():
    ref = ep.area_reference([0.25, 0.5], 8)
    assert ref.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]
    # a margin adds zeros only: the ones still count a of the image's pixels
    ref = ep.area_reference([0.25, 0.5], 8, total=12)
    assert ref.tolist() == [[0] * 10 + [1] * 2, [0] * 8 + [1] * 4]


def test_batch_of_images_and_areas_equals_single_runs(tiny):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    kw = dict(areas=[0.1, 0.3], steps=12, step=4, sigma=6.0, progress=False)
    batch = xu.explain("extremal_perturbation", tiny, x, target=[0, 2], **kw)
    assert batch.extras["masks"].shape == (2, 2, 24, 24)
    for i, t in enumerate([0, 2]):
        for j, a in enumerate([0.1, 0.3]):
            one = xu.explain("extremal_perturbation", tiny, x[i:i + 1], target=t,
                             **{**kw, "areas": [a]})
            torch.testing.assert_close(one.extras["masks"][0, 0], batch.extras["masks"][i, j],
                                       rtol=0, atol=1e-10)
    torch.testing.assert_close(batch.saliency, batch.extras["masks"].sum(1))


@pytest.mark.parametrize("variant,areas", [("preserve", [0.1, 0.3, 0.5]), ("delete", [0.2])])
def test_area_matches_request_after_optimisation(tiny, variant, areas):
    torch.manual_seed(2)
    # 32 px: at 24 px the margin (sigma = 6 px a side) is half the image, and a mask of half
    # of it cannot keep clear of the margin, where its area is spent outside the image
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    expl = xu.explain("extremal_perturbation", tiny, x, target=1, areas=areas, steps=200,
                      step=4, sigma=6.0, variant=variant, progress=False)
    achieved = expl.extras["achieved"][0]
    torch.testing.assert_close(achieved, torch.tensor(areas, dtype=torch.float64),
                               rtol=0, atol=0.05)


class SquareContrast(nn.Module):
    """Class 0's logit is the contrast of an 8 x 8 checkerboard at rows 4-11, columns 12-19
    (not centred vertically, so a flipped or transposed mask misses it): any blur of it
    lowers the logit, nothing outside it counts."""

    def forward(self, x):
        contrast = 4 * (x[:, 0, 4:12, 12:20] - 0.5).pow(2).mean((1, 2))
        return torch.stack([10 * contrast, torch.zeros_like(contrast)], 1)


def test_preserving_mask_keeps_the_evidence():
    x = torch.full((1, 3, 32, 32), 0.5, dtype=torch.float64)
    x[:, :, 4:12, 12:20] = (torch.arange(8)[:, None] + torch.arange(8)).remainder(2)
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[4:12, 12:20] = True
    model = SquareContrast()
    expl = xu.explain("extremal_perturbation", model, x, target=0, areas=[0.1, 0.3],
                      steps=100, step=4, sigma=6.0, progress=False)
    masks = expl.extras["masks"][0]
    # the masks keep the checkerboard (6 % of the image) and spend little area elsewhere
    assert (masks[:, square].mean(1) > 0.8).all()
    assert (masks[:, ~square].mean(1) < 0.3 * masks[:, square].mean(1)).all()
    # and keep the class: fully blurred the image scores p = 0.5, the kept one nearly 1
    with torch.no_grad():
        blurred = model(ep.blur_pyramid(x, 8, 20.0)[:, 0]).softmax(1)[0, 0]
        kept = model(expl.extras["perturbed"][0]).softmax(1)[:, 0]
    torch.testing.assert_close(kept, expl.extras["prob_perturbed"][0])
    assert blurred < 0.51 and (kept > 0.98).all()


def test_bad_parameters(tiny):
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="areas"):
        xu.explain("extremal_perturbation", tiny, x, areas=[0.0])
    with pytest.raises(ValueError, match="variant"):
        xu.explain("extremal_perturbation", tiny, x, variant="dual")
    with pytest.raises(ValueError, match="reward"):
        xu.explain("extremal_perturbation", tiny, x, steps=1, reward="log", progress=False)


def test_agrees_with_torchray_on_shapes(shapes_model):
    """TorchRay's extremal perturbation is the oracle: on two shapes images our masks keep
    much the same region as its masks (top-area overlap), at the area its masks achieve, and
    preserve the target logit (the reward both maximise) at least about as well."""
    pytest.importorskip("torchray")
    from xai_utils.data import shapes
    from xai_utils.evaluation import references as ref

    data = shapes.generate(2, seed=3)
    theirs = ref.extremal_torchray(shapes_model, data.images, data.labels, [0.1], steps=150,
                                   step=7, sigma=14)[:, 0]
    area = float(theirs.mean())
    ours = xu.explain("extremal_perturbation", shapes_model, data.images, data.labels,
                      areas=[area], steps=150, step=7, sigma=14.0,
                      progress=False).extras["masks"][:, 0]
    assert (ours.mean((1, 2)) - area).abs().max() < 0.05
    assert float(ref.top_overlap(ours, theirs, area).mean()) > 0.4
    pyramid = ep.blur_pyramid(data.images)
    with torch.no_grad():
        def kept(m):
            out = shapes_model(ep.apply_pyramid(pyramid, m[:, None]))
            return out.gather(1, data.labels[:, None])[:, 0]
        full = shapes_model(data.images).gather(1, data.labels[:, None])[:, 0]
        assert (kept(ours) >= kept(theirs) - 0.1 * full.abs()).all()
