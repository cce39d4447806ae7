"""Feature extraction, occlusion strategies and the metrics of thesis ch. 3."""

import pytest
import torch

import xai_utils as xu
from xai_utils import feature_occlusion as fx
from xai_utils.core.ops import gaussian_blur


def blobs() -> torch.Tensor:
    """40 x 40 map: a 25-px square plus one diagonal pixel, a 30-px bar, a 4-px dot."""
    r = torch.zeros(1, 40, 40, dtype=torch.float64)
    r[0, 10:15, 10:15] = 1.0
    r[0, 15, 15] = 1.0          # touches (14, 14) only diagonally
    r[0, 25:30, 25:31] = 2.0
    r[0, 30:32, 5:7] = 1.0
    r[0, 20, 20] = -3.0         # negative relevance never forms a feature
    return r


def test_known_blobs_diagonal_joined_at_1_5_not_at_1():
    r = blobs()
    f = fx.extract(r, threshold=1.0, distance=1.5, min_size=3, border=2)
    assert f.counts == [3]
    assert f.sizes[0].tolist() == [30, 26, 4]          # ordered by relevance mass
    assert f.labels[0, 15, 15] == f.labels[0, 10, 10] == 2
    f1 = fx.extract(r, threshold=1.0, distance=1.0, min_size=3, border=2)
    assert f1.sizes[0].tolist() == [30, 25, 4] and f1.labels[0, 15, 15] == 0
    f2 = fx.extract(r, threshold=1.0, distance=1.5, min_size=4, border=2)
    assert f2.sizes[0].tolist() == [30, 26]            # "<= min_size" dropped


def test_distance_two_bridges_a_one_pixel_gap():
    m = torch.zeros(1, 9, 9, dtype=torch.bool)
    m[0, 4, 1:4] = True
    m[0, 4, 5:8] = True                                 # gap of one pixel at column 4
    assert len(fx.connected_components(m, 1.5).unique()) == 3
    assert len(fx.connected_components(m, 2.0).unique()) == 2
    assert fx.offsets(1.0) == [(-1, 0), (0, -1), (0, 1), (1, 0)]
    assert len(fx.offsets(1.5)) == 8 and len(fx.offsets(2.0)) == 12


def test_spiral_component_and_border_band():
    m = torch.zeros(1, 30, 30, dtype=torch.bool)
    for i in range(0, 14, 2):                           # nested square rings joined by gaps
        m[0, i, i:30 - i] = m[0, 29 - i, i:30 - i] = True
        m[0, i:30 - i, i] = m[0, i:30 - i, 29 - i] = True
    lab = fx.connected_components(m, 1.0)
    assert len(lab[m].unique()) == 7 and (lab[~m] == 0).all()
    r = torch.ones(1, 30, 30)
    f = fx.extract(r, threshold=0.5, min_size=0, border=5)
    assert f.counts == [1] and f.sizes[0].item() == 400
    assert (f.labels[0, :5] == 0).all() and (f.labels[0, :, -5:] == 0).all()


def test_invariants_on_lrp_like_noise():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 64, 64, generator=g)
    r = gaussian_blur(r[:, None], 1.5)[:, 0] + 0.05      # sum > 0, some negative
    assert (r < 0).any()
    f = fx.extract(r, threshold=5.0, distance=1.5, min_size=20, border=3)
    h, w = r.shape[1:]
    assert sum(f.counts) > 3
    for i in range(3):
        masks = f.masks(i)
        assert masks.sum(0).max() <= 1                              # disjoint
        assert (masks.flatten(1).sum(1) > 20).all()                  # larger than min
        assert (f.relevance[i][masks.any(0)] >= 5.0 / (h * w)).all()  # pass threshold
        assert torch.allclose(f.relevance[i].sum(), torch.tensor(1.0))
        assert (f.mass[i][:-1] >= f.mass[i][1:]).all()


def test_real_model_gradient_features():
    model = xu.load_model("shapes_vgg")
    batch = xu.data.shapes.generate(2, seed=3)
    sal = xu.explain("gradient", model, batch.images).saliency
    f = fx.extract(sal)
    assert all(c >= 1 for c in f.counts)
    assert ((f.labels > 0) <= (f.relevance >= 5 / 112**2)).all()


def l_feature() -> torch.Tensor:
    m = torch.zeros(2, 16, 16, dtype=torch.bool)
    m[0, 2:9, 3] = True
    m[0, 8, 3:10] = True                                # an L: box rows 2..8, cols 3..9
    m[1, 12:14, 12:14] = True
    return m


def test_subset_enumeration():
    for n in range(0, 7):
        s = fx.subsets(n)
        assert s.shape == (2**n, n) and (n == 0 or len(s.unique(dim=0)) == 2**n)
        assert all(fx.subset_index(row) == i for i, row in enumerate(s))
    s = fx.subsets(15, samples=300)
    assert s.shape[1] == 15 and len(s.unique(dim=0)) == len(s) and len(s) > 2 * 15 + 2


@pytest.mark.parametrize("strategy", fx.STRATEGIES)
def test_occlusion_changes_only_chosen_regions(strategy):
    masks = l_feature()
    x = torch.rand(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    chosen = fx.subsets(2)
    out = fx.occlude(x, masks, chosen, strategy, k=4)
    changed = (out != x).any(1)
    box = fx.box_masks(masks)
    assert box[0].sum() == 7 * 7 and box[0, 2:9, 3:10].all()
    assert not changed[0].any()
    allowed = {"noise": masks, "blur": masks, "rectangle": box,
               "pixelate": fx.block_maps(masks, 4) >= 0}[strategy]
    for row, ch in zip(chosen, changed, strict=True):
        region = (allowed & row[:, None, None]).any(0)
        assert not (ch & ~region).any()
        if row.any():
            assert ch[(masks & row[:, None, None]).any(0)].float().mean() > 0.9


def test_pixelisation_blocks_are_their_mean():
    masks = l_feature()[:1]
    blocks = fx.block_maps(masks, 4)[0]
    # blocks of the 7x7 box anchored at (2, 3): rows 2-5 | 6-8, cols 3-6 | 7-9;
    # the top-right block (rows 2-5, cols 7-9) does not touch the L
    assert (blocks[2:6, 7:10] == -1).all() and (blocks[2:9, 3:7] >= 0).all()
    assert (blocks[6:9, 7:10] >= 0).all() and (blocks[blocks >= 0].unique().numel() == 3)
    assert (blocks[:2] == -1).all() and (blocks[:, 10:] == -1).all()
    x = torch.rand(3, 16, 16, dtype=torch.float64)
    out = fx.occlude(x, masks, torch.ones(1, 1, dtype=torch.bool), "pixelate", k=4)[0]
    noised = fx.occlude(x, masks, torch.ones(1, 1, dtype=torch.bool), "noise")[0]
    for b in blocks[blocks >= 0].unique():
        sel = blocks == b
        expect = noised[:, sel].mean(1, keepdim=True)
        assert torch.allclose(out[:, sel], expect.expand(-1, int(sel.sum())))


def test_pixelisation_of_overlapping_blocks_and_batch_reuse():
    m = l_feature()
    m[1] = False
    m[1, 4:6, 5:7] = True  # a square inside the L's first block (rows 2-5, cols 3-6)
    x = torch.rand(3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    both = torch.ones(1, 2, dtype=torch.bool)
    noised = fx.occlude(x, m, both, "noise")[0]
    block = torch.zeros(16, 16, dtype=torch.bool)
    block[2:6, 3:7] = True

    def mean_over(region, n):
        return noised[:, region].mean(1, keepdim=True).expand(-1, n)

    out = fx.occlude(x, m, both, "pixelate", k=4)[0]
    rest = block & ~m[1]
    assert torch.allclose(out[:, rest], mean_over(block, int(rest.sum())))
    assert torch.allclose(out[:, m[1]], mean_over(m[1], 4))  # the later feature wins
    flipped = fx.occlude(x, m.flip(0), both, "pixelate", k=4)[0]
    assert torch.allclose(flipped[:, block], mean_over(block, 16))
    occluder = fx.Occluder(x, m, "pixelate", k=4)
    chosen = fx.subsets(2)
    first = occluder(chosen[:2])
    second = occluder(chosen[2:], into=first)
    assert second.data_ptr() == first.data_ptr()
    assert torch.equal(second, fx.occlude(x, m, chosen[2:], "pixelate", k=4))
    assert second.is_contiguous(memory_format=torch.channels_last)


def test_metrics_on_hand_made_predictions():
    chosen = fx.subsets(3)
    p = torch.zeros(8, 3, dtype=torch.float64)
    # class 0 confidence by subset (bit i = feature i occluded)
    conf = torch.tensor([0.9, 0.8, 0.5, 0.3, 0.85, 0.6, 0.45, 0.2], dtype=torch.float64)
    p[:, 0] = conf
    p[:, 1] = 1 - conf
    r = fx.analyze(p, chosen)
    assert r["original_class"] == 0 and r["most_important"] == 1
    assert r["largest_change"]["occluded"] == [0, 1, 2]
    assert r["largest_change"]["change"] == pytest.approx(0.7)
    assert r["single_drops"] == pytest.approx([0.1, 0.4, 0.05])
    assert r["min_occlude"] == {"occluded": [0, 1], "count": 2, "new_class": 1}
    # keep: feature 1 visible alone (occluded {0,2}: 0.6) keeps class 0
    assert r["min_keep"]["visible"] == [1] and r["min_keep"]["count"] == 1


def test_evaluate_and_tool_on_real_net():
    model = xu.load_model("shapes_vgg")
    batch = xu.data.shapes.generate(1, seed=5)
    sal = xu.explain("gradient", model, batch.images).saliency
    f = fx.extract(sal)
    masks = f.masks(0)[:4]
    chosen = fx.subsets(masks.shape[0])
    probs = fx.evaluate(model, batch.images[0], masks, chosen, "pixelate", batch_size=5)
    direct = model(batch.images).softmax(1)[0]
    assert torch.allclose(probs[0], direct, atol=1e-6)
    tool = fx.OcclusionTool(model, batch.images[0], masks, probs, top=2)
    image, p, c = tool.state([0, 2])
    assert torch.allclose(p, probs[0b101].topk(2).values)
    assert torch.equal(image[None], fx.occlude(batch.images[0], masks, chosen[5:6], "pixelate",
                                               low=0.0, high=1.0))


def test_per_map_parameters_and_drop_small_match_single_calls():
    r = blobs().expand(3, -1, -1)
    f = fx.extract(r, [1.0, 1.0, 1e9], 1.5, [3, 25, 3], border=2)
    assert f.counts == [3, 2, 0]
    assert f.sizes[1].tolist() == [30, 26]
    base = fx.extract(r[:1], 1.0, 1.5, 0, border=2)
    for m in (0, 4, 25, 29, 30):
        lab, n = fx.drop_small(base.labels, m)
        ref = fx.extract(r[:1], 1.0, 1.5, m, border=2)
        assert n == ref.counts and torch.equal(lab, ref.labels)


def test_tool_widget_has_a_checkbox_per_feature_in_importance_order():
    pytest.importorskip("ipywidgets")
    model = xu.load_model("shapes_vgg")
    batch = xu.data.shapes.generate(1, seed=5)
    masks = fx.extract(xu.explain("gradient", model, batch.images).saliency).masks(0)[:3]
    probs = fx.evaluate(model, batch.images[0], masks, fx.subsets(3))
    box = fx.OcclusionTool(model, batch.images[0], masks, probs, order=[2, 0, 1]).widget()
    checks = box.children[0].children
    assert len(checks) == 3 and checks[0].description.startswith("feature 3")
    checks[0].value = True                              # ticking re-renders without error
    with pytest.raises(ValueError):
        fx.OcclusionTool(model, batch.images[0], masks, probs[:4])


def test_window_agreement_by_hand():
    masks = torch.zeros(2, 10, 10, dtype=torch.bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 7, 7] = True
    drop = torch.zeros(10, 10)
    drop[1:3, 1:3] = -0.5          # windows over feature 1 raise p
    drop[7, 7] = 0.2
    drop[7, 4] = 1.0               # the largest drop: 3 px left of feature 2
    a = fx.window_agreement(drop, masks)
    assert a["peak"] == [7, 4] and a["peak_distance"] == pytest.approx(3.0)
    assert a["mean_drop_on_features"] == pytest.approx((4 * -0.5 + 0.2) / 5)
    assert a["mean_drop_elsewhere"] == pytest.approx(1.0 / 95)
    assert a["raise_share_on_features"] == pytest.approx(4 / 5)
    assert fx.window_agreement(drop, masks[:0])["peak_distance"] is None
