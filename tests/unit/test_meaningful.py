import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.methods import meaningful as mp


@pytest.mark.parametrize("preset", ["port", "paper"])
def test_mask_one_without_noise_gives_the_image_exactly(preset):
    p = mp.resolve_preset(preset)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 32)
    null = mp.null_image(x, p)
    mask = torch.ones(2, 1, p.mask_size, p.mask_size)
    up = mp.upsample_mask(mask, (32, 32), p)
    assert torch.equal(up, torch.ones_like(up))
    assert torch.equal(mp.blend(x, null, up), x)
    l1, tv = mp.regularizers(mask, p)
    assert torch.equal(l1, torch.zeros(2)) and torch.equal(tv, torch.zeros(2))
    # mask 0 gives the null image
    zero = mp.upsample_mask(torch.zeros_like(mask), (32, 32), p)
    torch.testing.assert_close(mp.blend(x, null, zero), null)


def test_regularisers_hand_worked():
    m = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
    l1, tv = mp.regularizers(m, mp.resolve_preset("port"))
    # mean|1-m| = 1/4; rows: |0|^3, |1|^3 -> 0.5; cols: |-1|^3, |0|^3 -> 0.5
    assert l1.item() == 0.25 and tv.item() == 1.0
    l1, tv = mp.regularizers(m, mp.resolve_preset("paper"))
    # sum|1-m| = 1; one interior pixel: (dy^2 + dx^2)^(3/2) = (0 + 1)^1.5
    assert l1.item() == 1.0 and tv.item() == 1.0


def test_median_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    torch.manual_seed(2)
    x = torch.randn(2, 3, 20, 17, dtype=torch.float64)
    ours = mp.median_blur(x, 11)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, 11, 11), mode="nearest")
    torch.testing.assert_close(ours, torch.from_numpy(ref), rtol=0, atol=0)


def test_presets_and_errors():
    assert mp.PRESETS["port"].steps == 500 and mp.PRESETS["paper"].steps == 300
    assert mp.resolve_preset("paper", steps=7, tv=None).steps == 7
    with pytest.raises(ValueError, match="unknown preset"):
        mp.resolve_preset("caffe")
    with pytest.raises(TypeError, match="unknown meaningful_perturbation parameter"):
        mp.resolve_preset("port", lambda1=1.0)


@pytest.mark.parametrize("preset", ["port", "paper"])
def test_batch_equals_single_runs(tiny, preset):
    torch.manual_seed(3)
    x = torch.rand(3, 3, 24, 24, dtype=torch.float64)
    kw = dict(preset=preset, steps=15, mask_size=6, seed=5, progress=False,
              jitter=2 if preset == "paper" else None)
    batch = xu.explain("meaningful_perturbation", tiny, x, target=[0, 1, 2], **kw)
    for i in range(3):
        one = xu.explain("meaningful_perturbation", tiny, x[i:i + 1], target=[i], **kw)
        torch.testing.assert_close(one.extras["mask"][0], batch.extras["mask"][i],
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(one.extras["loss"][0], batch.extras["loss"][i],
                                   rtol=0, atol=1e-10)
    assert batch.extras["mask"].abs().sum() > 0 and (batch.extras["mask"] < 1).any()
    assert all(q.requires_grad for q in tiny.parameters())   # restored


def test_same_seed_same_result_and_seed_matters(tiny):
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    a = xu.explain("meaningful_perturbation", tiny, x, steps=10, mask_size=6, progress=False)
    b = xu.explain("meaningful_perturbation", tiny, x, steps=10, mask_size=6, progress=False)
    c = xu.explain("meaningful_perturbation", tiny, x, steps=10, mask_size=6, seed=1,
                   progress=False)
    assert torch.equal(a.saliency, b.saliency)
    assert not torch.equal(a.saliency, c.saliency)


def test_shapes_model_mask_drops_probability(shapes_model):
    from xai_utils.data import shapes

    data = shapes.generate(2, seed=0)
    expl = xu.explain("meaningful_perturbation", shapes_model, data.images, preset="port", steps=40,
                      progress=False, snapshots=(10, 40))
    e = expl.extras
    assert expl.saliency.shape == (2, 112, 112) and e["snapshots"].shape == (2, 2, 112, 112)
    # the returned map, used as the deletion mask (x * (1 - s) + null * s), is what takes the
    # class away: the model's probabilities, recomputed here, are the ones reported
    x, s, rows = data.images, expl.saliency[:, None], torch.arange(2)
    with torch.no_grad():
        before = shapes_model(x).softmax(1)[rows, expl.target]
        after = shapes_model(x * (1 - s) + e["null"] * s).softmax(1)[rows, expl.target]
    torch.testing.assert_close(e["prob_before"], before)
    torch.testing.assert_close(e["prob_after"], after)
    assert (e["prob_after"] < 0.05 * e["prob_before"]).all()
    assert (e["prob"][:, -5:].mean(1) < e["prob"][:, :5].mean(1)).all()


def _square_model():
    class MaxModel(nn.Module):
        def forward(self, x):
            peak = x[:, 0].flatten(1).amax(1)
            return torch.stack([50 * (peak - 0.5), torch.zeros_like(peak)], 1)
    return MaxModel()


def test_deletion_game_hand_worked():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, 4:8, 4:8] = 1.0
    right = torch.zeros(16, 16)
    right[4:8, 4:8] = 1.0
    wrong = torch.zeros(16, 16)
    wrong[10:14, 10:14] = 1.0
    game = mp.deletion_game(_square_model(), x, torch.stack([right, wrong]),
                            torch.tensor([0, 0]))
    # the right map's box is the square (16 px); the wrong map only reaches the goal at
    # alpha = 0, whose box is the whole image: not a success
    assert game.area.tolist() == [16, 256]
    assert game.box[0].tolist() == [4, 4, 7, 7] and game.box[1].tolist() == [0, 0, 15, 15]
    assert game.success.tolist() == [True, False] and (game.score <= 0.01).all()


def test_default_preset_is_the_papers():
    import inspect

    default = inspect.signature(mp.meaningful_perturbation).parameters["preset"].default
    assert mp.resolve_preset() == mp.PRESETS["paper"] and default == "paper"


def test_mask_controls_of_an_untouched_mask(tiny):
    """A run of 0 steps leaves m = 1: every control of the optimised input is the image, the
    null image's ratio is the floor, and the difference from the null image is |x - null|."""
    model = tiny
    x = torch.rand(2, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expl = xu.explain("meaningful_perturbation", model, x, preset="port", steps=0, noise=0.0,
                      progress=False)
    c = mp.mask_controls(model, x, expl)
    ones = torch.ones(len(x), dtype=x.dtype)
    for k in ("optimised", "rounded to 0/1", "turned 180°"):
        torch.testing.assert_close(c.ratios[k], ones)
    null = expl.extras["null"]
    floor = mp._probability(model, null, expl.target) / expl.extras["prob_before"]
    torch.testing.assert_close(c.ratios["null image"], floor)
    torch.testing.assert_close(c.difference, (x - null).abs().sum(1))
    assert torch.equal(c.top_class, model(x).argmax(1))
