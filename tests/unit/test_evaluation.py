"""The side-by-side evaluation: scores on hand-made maps, the randomisation test catching a
method that ignores the model, the leak detector catching a leak, the profiler measuring a
known allocation, and determinism."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from scipy.stats import spearmanr

import xai_utils as xu
from xai_utils import evaluation as ev
from xai_utils.core.registry import _REGISTRY, Explanation, register
from xai_utils.data import shapes


@pytest.fixture
def temporary_method():
    """Register a method for one test and remove it again."""
    added = []

    def add(name, fn):
        register(name)(fn)
        added.append(name)

    yield add
    for name in added:
        _REGISTRY.pop(name)


def test_spearman_matches_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (3, 6, 7), generator=gen).float()  # many ties
    b = torch.rand(3, 6, 7, generator=gen).round(decimals=1)
    ours = ev.spearman(a, b)
    for i in range(3):
        want = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(want, abs=1e-12)
    assert ev.spearman(a, a).tolist() == pytest.approx([1.0] * 3)


def test_baselines_and_scores_on_hand_made_maps(shapes_model):
    data = shapes.generate(6, seed=3)
    perfect = data.masks.float()
    scores = ev.quality(shapes_model, data.images, data.labels, perfect, data.masks, auc_images=2,
                        auc_steps=4)
    assert scores["pointing_game"] == 1.0 and scores["energy_in_mask"] == pytest.approx(1.0)
    assert scores["auc_images"] == 2 and 0 <= scores["deletion_auc"] <= 1
    centre = ev.baseline_maps("centre", 2, 5, 7)
    assert centre[0].argmax().item() == 2 * 7 + 3 and centre.min() == 0
    r1, r2 = (ev.baseline_maps("random", 2, 5, 7, seed=4) for _ in range(2))
    assert torch.equal(r1, r2) and not torch.equal(r1[0], r1[1])
    with pytest.raises(ValueError, match="centre"):
        ev.baseline_maps("middle", 1, 3, 3)


def test_peaks_on_own_half():
    maps = torch.zeros(3, 4, 8)
    maps[0, 1, 1] = maps[1, 2, 6] = maps[2, 0, 7] = 1
    left = torch.tensor([True, False, True])
    assert ev.peaks_on_own_half(maps, left).tolist() == [True, True, False]


def test_randomisation_flags_a_map_that_ignores_the_model(shapes_model, temporary_method):
    def brightness(model, x, target):  # an "explanation" that never looks at the model
        return Explanation(x.mean(1), target)

    def flipped(model, x, target):  # the same map, inverted on every randomised copy
        return Explanation(x.mean(1) * (1 if model is shapes_model else -1), target)

    temporary_method("brightness", brightness)
    temporary_method("flipped", flipped)
    data = shapes.generate(4, seed=5)
    before = copy.deepcopy(shapes_model.state_dict())
    stages = ev.parametrized_layers(shapes_model)
    assert stages == ["classifier", "features.9", "features.6", "features.3", "features.0"]
    curves = ev.cascading_randomization(shapes_model, data.images, data.labels,
                                        {"brightness": {}, "gradcam": {}, "flipped": {}})
    grad = curves["gradcam"]
    assert set(grad) == {"spearman", "abs_spearman", "ssim"}
    assert grad["ssim"].shape == (len(stages) + 1, 4) and torch.all(grad["ssim"][0] == 1)
    for key in grad:
        assert curves["brightness"][key] == pytest.approx(torch.ones(len(stages) + 1, 4))
    assert grad["abs_spearman"][-1].mean() < 0.5  # Grad-CAM follows the weights
    flip = curves["flipped"]  # an inverted map has not changed: only the signed score misses it
    assert flip["spearman"][1:] == pytest.approx(-torch.ones(len(stages), 4))
    assert flip["abs_spearman"] == pytest.approx(torch.ones(len(stages) + 1, 4))
    for key, value in shapes_model.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, before[key])


def test_ssim_matches_scikit_image():
    from skimage.metrics import structural_similarity

    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 20, 17, generator=gen, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(3, 20, 17, generator=gen, dtype=torch.float64)).clamp(0, 1)
    ours = ev.ssim(a, b)
    for i in range(3):
        want = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0)
        assert ours[i].item() == pytest.approx(want, abs=1e-10)
    assert ev.ssim(a, a) == pytest.approx(torch.ones(3, dtype=torch.float64))


def test_memory_growth_sees_a_leak_and_no_leak(shapes_model, temporary_method):
    kept = []

    def leaky(model, x, target):
        kept.append(torch.zeros(1000))
        return Explanation(x.mean(1), target)

    temporary_method("leaky", leaky)
    data = shapes.generate(2, seed=6)
    clean = ev.memory_growth(shapes_model, data.images, data.labels, "gradcam", calls=10)
    assert clean["tensors_growth"] == 0 and clean["hooks"] == 0 and clean["ratio"] < 1.2
    leak = ev.memory_growth(shapes_model, data.images, data.labels, "leaky", calls=10)
    assert leak["tensors_growth"] == 9


def test_profile_times_and_settings_cover_every_method(shapes_model):
    assert set(ev.method_settings(shapes_model)) == set(xu.methods())
    s = ev.method_settings(shapes_model, steps=4)
    assert all(s[name]["steps"] == 4 for name in xu.methods() if xu.method_info(name).iterative)
    assert s["occlusion"]["window"] == 16 and s["occlusion"]["stride"] == 8
    data = shapes.generate(2, seed=7)
    p = ev.profile(ev.forward_backward(shapes_model, data.images, data.labels), torch.device("cpu"))
    assert p["seconds"] > 0


def test_profile_sees_a_known_allocation_and_a_known_time():
    def allocate():
        buffer = torch.ones(64 * 2**20 // 4)  # 64 MiB, every page written
        time.sleep(0.05)  # held long enough for the resident-memory sampler
        return buffer.sum()

    cpu = torch.device("cpu")
    big, idle = ev.profile(allocate, cpu), ev.profile(lambda: time.sleep(0.05), cpu)
    assert 56 < big["peak_mb"] < 80 and idle["peak_mb"] < 8
    assert 0.05 <= big["seconds"] < 1 and 0.05 <= idle["seconds"] < 1


def test_same_seed_same_tables(shapes_model):
    """Two runs of every method with the same seed give identical scores on CPU."""
    def table():
        data = shapes.generate(3, seed=8)
        model = xu.load_model("shapes_vgg")
        out = {}
        for name, params in ev.method_settings(model, steps=2).items():
            maps = ev.run_method(model, data.images, data.labels, name, params)
            out[name] = ev.quality(model, data.images, data.labels, maps, data.masks,
                                   auc_steps=4)
        return out

    assert table() == table()


def test_markdown_table_and_saved_tables(tmp_path, monkeypatch):
    text = ev.markdown_table([{"a": 1.23456, "b": None}, {"a": 2, "b": "x"}], ["a", "b"],
                             {"a": ".2f"})
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | – |", "| 2.00 | x |"]
    ci = ev.markdown_table([{"a": 0.5, "a_ci": [0.41, 0.6]}], ["a"], {"a": ".2f"})
    assert ci.splitlines()[-1] == "| 0.50 [0.41, 0.60] |"
    none = ev.markdown_table([{"a": 0.5, "a_ci": [None, None]}], ["a"], {"a": ".2f"})
    assert none.splitlines()[-1] == "| 0.50 [n/a] |"
    monkeypatch.setenv("XAI_FIGURES_DIR", str(tmp_path))
    assert ev.save_tables(text, "t").read_text() == text + "\n"
    with pytest.raises(ValueError):
        ev.save_tables(text, "../t")


def test_bootstrap_interval_has_the_known_answer():
    assert ev.bootstrap_ci([0.3] * 7) == pytest.approx((0.3, 0.3, 0.3))
    mean, lo, hi = ev.bootstrap_ci([0.7])  # one image: no interval, and no verdict
    assert mean == pytest.approx(0.7) and lo != lo and hi != hi
    assert ev.versus([0.9], [0.1]) == "tied"
    # half zeros, half ones: resampled means are Binomial(100, 1/2) / 100, whose 2.5th and
    # 97.5th percentiles are 0.40 and 0.60
    mean, lo, hi = ev.bootstrap_ci([0.0] * 50 + [1.0] * 50, resamples=20000)
    assert (mean, lo, hi) == pytest.approx((0.5, 0.40, 0.60))
    assert ev.bootstrap_ci(torch.arange(9.0), seed=3) == ev.bootstrap_ci(torch.arange(9.0), seed=3)


def test_paired_difference_sees_a_shift_that_the_spread_hides():
    a = torch.rand(40, generator=torch.Generator().manual_seed(2))
    b = a + 0.01  # a tiny shift under a large spread between images
    assert ev.bootstrap_ci(a)[2] > ev.bootstrap_ci(b)[1]  # the two intervals overlap
    assert ev.paired_difference(b, a) == pytest.approx((0.01, 0.01, 0.01))
    assert ev.versus(b, a) == "better" and ev.versus(b, a, higher_is_better=False) == "worse"
    assert ev.versus(a, a) == "tied"
    assert ev.paired_difference(b, a[:10])[0] == pytest.approx(0.01)  # common first images


def test_top_names_every_tie():
    ones, zeros = torch.ones(20), torch.zeros(20)
    assert ev.top({"x": ones, "y": ones, "z": zeros}) == ["x", "y"]
    assert ev.top({"x": ones, "y": ones, "z": zeros}, higher_is_better=False) == ["z"]
    assert ev.stats.split({"x": ones, "z": zeros}, ones) == {"better": [], "tied": ["x"],
                                                             "worse": ["z"]}
