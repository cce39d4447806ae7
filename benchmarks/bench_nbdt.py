"""NBDT timings for the efficientnet_lite0 induced tree, measured in one run.

Rows: building our tree (clustering + WordNet naming + tensors); building the nbdt package's
decision rules on that graph with cached reads (and, with --uncached, without the cache as
nbdt 0.0.4 ships); soft and hard inference for a batch of logits, ours vs nbdt's, each as a
ratio to the network's own forward pass on the same batch.

    python benchmarks/bench_nbdt.py [--batch 32] [--uncached]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

import xai_utils as xu
from xai_utils import nbdt
from xai_utils.nbdt.hierarchy import nbdt_patched


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    return (time.perf_counter() - start) / repeat, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--uncached", action="store_true", help="also time nbdt as shipped")
    args = parser.parse_args()
    with nbdt_patched():  # nbdt imported without its terminal-size noise
        from nbdt.analysis import HardEmbeddedDecisionRules, SoftEmbeddedDecisionRules

    model = xu.load_model("efficientnet_lite0")
    t_wordnet, _ = timed(nbdt.wordnet)
    t_build, tree = timed(lambda: nbdt.induce(model))
    wnids = str(resources.files("nbdt") / "wnids/Imagenet1000.txt")
    rows = [("load WordNet (once per process)", t_wordnet, ""),
            ("ours: induce tree (Ward + WordNet + tensors)", t_build, "")]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(nbdt.write_graph(tree.graph, Path(tmp) / "g.json"))
        with nbdt_patched():
            t_rules, soft_rules = timed(
                lambda: SoftEmbeddedDecisionRules("Imagenet1000", path, wnids))
            hard_rules = HardEmbeddedDecisionRules("Imagenet1000", path, wnids)
        rows.append(("nbdt: decision rules, cached reads", t_rules, ""))
        if args.uncached:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                t_raw, _ = timed(lambda: SoftEmbeddedDecisionRules("Imagenet1000", path, wnids))
            rows.append(("nbdt: decision rules, as shipped", t_raw,
                         f"{t_raw / t_rules:.1f}x cached"))
    x = torch.randn(args.batch, 3, 224, 224, device=xu.device())
    with torch.no_grad():
        t_fwd, logits = timed(lambda: model(x), 3)
    rows.append((f"network forward, batch {args.batch}", t_fwd, "1.0x"))
    cpu = logits.cpu()
    for name, fn in [("ours: soft + hard inference", lambda: nbdt.infer(tree, logits)),
                     ("nbdt: soft inference", lambda: soft_rules.forward(cpu)),
                     ("nbdt: hard inference with decisions",
                      lambda: hard_rules.forward_with_decisions(cpu))]:
        t, _ = timed(fn, 3)
        rows.append((name, t, f"{t / t_fwd:.2f}x forward"))
    print(f"{'step':<48} {'seconds':>9}  ratio")
    for name, t, ratio in rows:
        print(f"{name:<48} {t:9.3f}  {ratio}")


if __name__ == "__main__":
    main()
