"""NBDT timings for the efficientnet_lite0 induced tree, measured in one run.

Rows: building our tree (clustering + WordNet naming + tensors); building the nbdt package's
decision rules on that graph with cached reads (and, with --uncached, without the cache as
nbdt 0.0.4 ships); soft and hard inference for a batch of logits, ours vs nbdt's, each as a
ratio to the network's own forward pass on the same batch.

    python benchmarks/bench_nbdt.py [--batch 32] [--uncached]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from importlib import resources
from pathlib import Path

import torch

import xai_utils as xu
from xai_utils import nbdt
from xai_utils.evaluation.profiling import timed
from xai_utils.nbdt.hierarchy import nbdt_patched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--uncached", action="store_true", help="also time nbdt as shipped")
    args = parser.parse_args()
    with nbdt_patched():  # nbdt imported without its terminal-size noise
        from nbdt.analysis import HardEmbeddedDecisionRules, SoftEmbeddedDecisionRules

    model = xu.load_model("efficientnet_lite0")
    dev = xu.device()
    # one-off steps: one timed run each, no warm-up (it would fill the caches they time);
    # `built` keeps what a timed call returns
    built: dict[str, object] = {}
    t_wordnet, t_build = timed(
        [nbdt.wordnet, lambda: built.update(tree=nbdt.induce(model))], dev, repeats=1,
        warmup=0)
    tree = built["tree"]
    wnids = str(resources.files("nbdt") / "wnids/Imagenet1000.txt")
    rows = [("load WordNet (once per process)", t_wordnet, ""),
            ("ours: induce tree (Ward + WordNet + tensors)", t_build, "")]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(nbdt.write_graph(tree.graph, Path(tmp) / "g.json"))
        with nbdt_patched():
            (t_rules,) = timed(
                [lambda: built.update(
                    soft=SoftEmbeddedDecisionRules("Imagenet1000", path, wnids))],
                dev, repeats=1, warmup=0)
            soft_rules = built["soft"]
            hard_rules = HardEmbeddedDecisionRules("Imagenet1000", path, wnids)
        rows.append(("nbdt: decision rules, cached reads", t_rules, ""))
        if args.uncached:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                (t_raw,) = timed(
                    [lambda: SoftEmbeddedDecisionRules("Imagenet1000", path, wnids)], dev,
                    repeats=1, warmup=0)
            rows.append(("nbdt: decision rules, as shipped", t_raw,
                         f"{t_raw / t_rules:.1f}x cached"))
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    # mean of 3 runs, no warm-up
    with torch.no_grad():
        (t_fwd,) = timed([lambda: built.update(logits=model(x))], dev, repeats=3, warmup=0,
                         reduce=statistics.mean)
    logits = built["logits"]
    rows.append((f"network forward, batch {args.batch}", t_fwd, "1.0x"))
    cpu = logits.cpu()
    inference = [("ours: soft + hard inference", lambda: nbdt.infer(tree, logits)),
                 ("nbdt: soft inference", lambda: soft_rules.forward(cpu)),
                 ("nbdt: hard inference with decisions",
                  lambda: hard_rules.forward_with_decisions(cpu))]
    times = timed([fn for _, fn in inference], dev, repeats=3, warmup=0,
                  reduce=statistics.mean)
    for (name, _), t in zip(inference, times, strict=True):
        rows.append((name, t, f"{t / t_fwd:.2f}x forward"))
    print(f"{'step':<48} {'seconds':>9}  ratio")
    for name, t, ratio in rows:
        print(f"{name:<48} {t:9.3f}  {ratio}")


if __name__ == "__main__":
    main()
