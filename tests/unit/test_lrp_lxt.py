"""Our LRP on a ViT against lxt, the reference code of AttnLRP (Achtibat et al. 2024): its
CP-LRP patches for torchvision's ViT (Ali et al. 2022's conservative propagation), and
AttnLRP built from lxt's own LayerNorm and GELU patches and its gradient-division rule on
the attention's query, key and value (lxt ships that attention patch for Hugging Face
models only; the division by 4, 4 and 2 is the one its attention wrapper applies).
Optional: lxt needs `transformers`, which this project does not install; the test runs where
lxt imports, e.g. after

    pip install --no-deps lxt==2.1 transformers==4.53.3 tokenizers==0.21.4 \
        huggingface_hub==0.34.4 safetensors regex

lxt patches torch's classes for good, so it runs in a child process."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

from xai_utils.methods.lrp import attribute

pytest.importorskip(
    "lxt.efficient", exc_type=ImportError,
    reason="lxt is not installed: it is in no dependency list (it needs transformers); to run "
           "this test: pip install --no-deps lxt==2.1 transformers==4.53.3 tokenizers==0.21.4 "
           "huggingface_hub==0.34.4 safetensors regex, then pytest tests/unit/test_lrp_lxt.py")

CHILD = textwrap.dedent("""
    import json, sys, torch
    from lxt.efficient import monkey_patch
    from lxt.efficient.models.vit_torch import cp_LRP
    from lxt.efficient.patches import patch_method
    from lxt.efficient.rules import divide_gradient
    from torchvision.models import vision_transformer
    patches = dict(cp_LRP)
    if sys.argv[3] == "attnlrp":  # uniform rule on both attention products, softmax as is
        def attention(self, query, key, value, *args, **kwargs):
            return self.original_forward(divide_gradient(query, 4), divide_gradient(key, 4),
                                         divide_gradient(value, 2), *args, **kwargs)
        patches[vision_transformer.nn.MultiheadAttention] = lambda cls: patch_method(
            attention, cls, keep_original=True)
    monkey_patch(vision_transformer, patches)
    model = torch.load(sys.argv[1], weights_only=False)
    x = torch.load(sys.argv[2]).requires_grad_(True)
    out = model(x)
    out[0, 3].backward()
    print(json.dumps((x * x.grad)[0].tolist()))
""")


def _vit(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(32, 8, num_layers=3, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=5)
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.1)
    model = model.eval().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.save(model, tmp_path / "vit.pt")
    torch.save(x, tmp_path / "x.pt")
    return model, x


@pytest.mark.parametrize("attention", ["conservative", "attnlrp"])
def test_vit_relevance_matches_lxt(tmp_path, attention):
    model, x = _vit(tmp_path)
    ours, _ = attribute(model, x, torch.tensor([3]), "epsilon", epsilon=1e-12,
                        attention=attention)
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "vit.pt"),
                          str(tmp_path / "x.pt"), attention],
                         capture_output=True, text=True, check=True)
    theirs = torch.tensor(json.loads(run.stdout), dtype=torch.float64)
    assert ours[0].abs().sum() > 0
    torch.testing.assert_close(ours[0], theirs, rtol=1e-6, atol=1e-9)


def test_attnlrp_differs_from_cp_lrp_on_this_vit(tmp_path):
    """The agreement above is not the two variants agreeing with each other."""
    model, x = _vit(tmp_path)
    cp, _ = attribute(model, x, torch.tensor([3]), "epsilon", epsilon=1e-12)
    attn, _ = attribute(model, x, torch.tensor([3]), "epsilon", epsilon=1e-12,
                        attention="attnlrp")
    assert (cp - attn).abs().max() > 1e-3 * cp.abs().max()
