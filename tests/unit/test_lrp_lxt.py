"""Our conservative LRP on a ViT against lxt's CP-LRP (the reference code of AttnLRP, Achtibat
et al. 2024, which also implements Ali et al. 2022's conservative propagation for
torchvision's ViT). Optional: lxt needs `transformers`, which this project does not install;
the test runs where lxt imports, e.g. after

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

pytest.importorskip("lxt.efficient", reason="lxt (optional, needs transformers)",
                    exc_type=ImportError)

CHILD = textwrap.dedent("""
    import json, sys, torch
    from lxt.efficient import monkey_patch
    from lxt.efficient.models.vit_torch import cp_LRP
    from torchvision.models import vision_transformer
    monkey_patch(vision_transformer, cp_LRP)
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


def test_vit_relevance_matches_lxt_cp_lrp(tmp_path):
    model, x = _vit(tmp_path)
    ours, _ = attribute(model, x, torch.tensor([3]), "epsilon", epsilon=1e-12)
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "vit.pt"),
                          str(tmp_path / "x.pt")], capture_output=True, text=True, check=True)
    theirs = torch.tensor(json.loads(run.stdout), dtype=torch.float64)
    assert ours[0].abs().sum() > 0
    torch.testing.assert_close(ours[0], theirs, rtol=1e-6, atol=1e-9)
