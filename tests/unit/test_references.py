"""The reference-library wrappers give the same maps as ours (Pearson r >= 0.999) on the
shapes model, so the benchmark's agreement column compares like with like."""

from __future__ import annotations

import pytest
import torch

import xai_utils as xu
from xai_utils.core.hooks import registered_hooks
from xai_utils.data import shapes
from xai_utils.evaluation import references as ref

pytest.importorskip("captum")
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("zennit")


@pytest.fixture(scope="module")
def batch():
    data = shapes.generate(3, seed=11)
    return data.images, data.labels


CASES = {
    "pytorch-grad-cam": (lambda m, x, t: xu.explain("gradcam", m, x, t).saliency,
                         ref.gradcam_pytorch_grad_cam),
    "captum-gradcam": (lambda m, x, t: xu.explain("gradcam", m, x, t).saliency,
                       ref.gradcam_captum),
    "captum-occlusion": (
        lambda m, x, t: xu.explain("occlusion", m, x, t, window=16, stride=8,
                                   output="logit").saliency,
        lambda m, x, t: ref.occlusion_captum(m, x, t, 16, 8)),
    "captum-lrp": (lambda m, x, t: xu.explain("lrp", m, x, t, composite="epsilon",
                                              bias=True).saliency, ref.lrp_captum),
    "zennit-lrp": (lambda m, x, t: xu.explain("lrp", m, x, t, composite="epsilon_alpha2beta1",
                                              bias=True).saliency, ref.lrp_zennit),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reference_maps_agree(shapes_model, batch, case):
    ours, theirs = CASES[case]
    x, t = batch
    a, b = ours(shapes_model, x, t), theirs(shapes_model, x, t)
    assert b.shape == a.shape
    assert ref.pearson(a, b) >= 0.999
    assert registered_hooks(shapes_model) == 0


def test_pearson_and_compare():
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    a = torch.stack([-((yy - 2) ** 2 + (xx - 5) ** 2), -((yy - 6) ** 2 + (xx - 1) ** 2)])
    assert ref.pearson(a, 3 * a + 1) == pytest.approx(1.0)
    assert ref.pearson(a, -a) == pytest.approx(-1.0)
    assert ref.pearson(a, a[:, ::2, ::2].contiguous()) > 0.9  # brought to the same size
    result = ref.compare(lambda: a, lambda: 2 * a, repeats=1)
    assert result["pearson"] == pytest.approx(1.0) and result["speedup"] > 0
    with pytest.raises(ValueError, match="no Zennit counterpart"):
        ref.lrp_zennit(None, a[:, None], torch.zeros(2, dtype=torch.long), "gamma")


def test_top_fraction_keeps_the_highest_pixels():
    from xai_utils.evaluation.references import top_fraction, top_overlap

    maps = torch.arange(32.0).view(2, 4, 4)
    keep = top_fraction(maps, 0.25)
    assert keep.sum((1, 2)).tolist() == [4, 4]
    assert keep[0].flatten()[-4:].all() and not keep[0].flatten()[:-4].any()
    assert top_overlap(maps, maps.flip(-1), 0.25).tolist() == [1.0, 1.0]
    assert top_overlap(maps, -maps, 0.25).tolist() == [0.0, 0.0]
