import gc

import pytest
import torch

import xai_utils as xu
from xai_utils.core.hooks import registered_hooks


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_capture_activations_and_gradients(shapes_model):
    x = torch.rand(2, 3, 112, 112)
    with xu.capture(shapes_model, "features.10", gradients=True) as rec:
        logits = shapes_model(x)
        logits[:, 1].sum().backward()
    act, grad = rec.activations["features.10"], rec.gradients["features.10"]
    assert act.shape == grad.shape == (2, 64, 14, 14)
    # the head is GAP + linear, so dy_1/dA = w_1 / (H W) at every position
    w = shapes_model.classifier.weight[1].detach()
    expected = (w / 196).view(1, 64, 1, 1).expand(2, 64, 14, 14)
    torch.testing.assert_close(grad, expected)
    assert registered_hooks(shapes_model) == 0
    shapes_model.zero_grad(set_to_none=True)


def test_hooks_removed_after_exception(shapes_model):
    with pytest.raises(RuntimeError, match="boom"):
        with xu.capture(shapes_model, ["features.0", "features.10"], gradients=True):
            assert registered_hooks(shapes_model) == 2
            raise RuntimeError("boom")
    assert registered_hooks(shapes_model) == 0


def test_unknown_layer_names_close_matches(shapes_model):
    with pytest.raises(ValueError, match="Close names: features.1,"):
        with xu.capture(shapes_model, "features.1x"):
            pass
    assert registered_hooks(shapes_model) == 0


def test_hundred_calls_leave_no_hooks_and_no_memory_growth(shapes_model):
    x = torch.rand(8, 3, 112, 112)

    def call():
        with xu.capture(shapes_model, "features.10", gradients=True) as rec:
            shapes_model(x)[:, 0].sum().backward()
        shapes_model.zero_grad(set_to_none=True)
        return rec

    call()
    gc.collect()
    first = _rss_mb()
    for _ in range(100):
        rec = call()
    del rec
    gc.collect()
    assert registered_hooks(shapes_model) == 0
    assert _rss_mb() <= 1.2 * first, (first, _rss_mb())
