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

    temporary_method("brightness", brightness)
    data = shapes.generate(4, seed=5)
    before = copy.deepcopy(shapes_model.state_dict())
    stages = ev.parametrized_layers(shapes_model)
    assert stages == ["classifier", "features.9", "features.6", "features.3", "features.0"]
    curves = ev.cascading_randomization(shapes_model, data.images, data.labels,
                                        {"brightness": {}, "gradcam": {}})
    assert len(curves["gradcam"]) == len(stages) + 1 and curves["gradcam"][0] == 1.0
    assert curves["brightness"] == pytest.approx([1.0] * (len(stages) + 1))
    assert curves["gradcam"][-1] < 0.5  # Grad-CAM follows the weights
    for key, value in shapes_model.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, before[key])


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
    monkeypatch.setenv("XAI_FIGURES_DIR", str(tmp_path))
    assert ev.save_tables(text, "t").read_text() == text + "\n"
    with pytest.raises(ValueError):
        ev.save_tables(text, "../t")
