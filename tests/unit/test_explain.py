import pytest
import torch
from torch import nn

import xai_utils as xu
from xai_utils.core.registry import resolve_target


class Linear(nn.Module):
    """logits = W vec(x): the gradient of logit c is W[c], worked out by hand."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 3, bias=True)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return Linear().double()


def test_gradient_equals_weights_of_linear_model(linear):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expl = xu.explain("gradient", linear, x, target=[2, 0])
    w = linear.fc.weight.detach().view(3, 3, 4, 4)
    expected = torch.stack([w[2].abs().amax(0), w[0].abs().amax(0)])
    torch.testing.assert_close(expl.saliency, expected)
    assert expl.method == "gradient" and expl.target.tolist() == [2, 0]


def test_target_none_is_top_class(linear):
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    expl = xu.explain("gradient", linear, x)
    assert torch.equal(expl.target, linear(x).argmax(1))


def test_bad_targets_and_names(linear):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with pytest.raises(IndexError, match="class index 3 is out of range"):
        xu.explain("gradient", linear, x, target=3)
    with pytest.raises(IndexError, match="-1"):
        resolve_target(linear, x, [0, -1])
    with pytest.raises(ValueError, match="3 targets for a batch of 2"):
        resolve_target(linear, x, [0, 1, 2])
    with pytest.raises(TypeError, match="integer"):
        resolve_target(linear, x, 1.5)
    with pytest.raises(ValueError, match="Did you mean gradient"):
        xu.explain("gradiant", linear, x)
    with pytest.raises(ValueError, match="B x C x H x W"):
        xu.explain("gradient", linear, x[0])
    with pytest.raises(TypeError, match="preprocess"):
        xu.explain("gradient", linear, [1, 2, 3])


def test_target_range_uses_model_classes(effnet):
    x = torch.zeros(1, 3, 224, 224)
    with pytest.raises(IndexError, match="1000 classes"):
        xu.explain("gradient", effnet, x, target=1000)


def test_methods_lists_registry():
    assert "gradient" in xu.methods()
    assert xu.methods() == sorted(xu.methods())


def test_normalized_maps():
    expl = xu.Explanation(torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]]),
                          torch.tensor([0, 0]))
    norm = expl.normalized()
    torch.testing.assert_close(norm[0], torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    assert (norm[1] == 0).all()
