"""Time per image of our LRP against Zennit and one plain forward+backward pass.

    python benchmarks/bench_lrp.py [--models vgg16 efficientnet_lite0] [--batches 1 8]

VGG16 has random weights (the time does not depend on them); efficientnet_lite0 is the
embedded model. Both LRPs use the epsilon / alpha2-beta1 composite (Zennit's
EpsilonAlpha2Beta1) with biases in the denominators. Zennit gets its VGG canonizer; it has
none for timm's EfficientNet (BatchNorm with a fused activation), so there it runs without one
(its map then differs; the timing is still a like-for-like pass). Each number is the median
of `--repeats` runs after `--warmup` warm-ups, all in this one run, the three passes taking
turns in every round. The thesis's historical anchor: about 18.3 s per VGG16 image on a 4-core
CPU (2018).
"""

from __future__ import annotations

import argparse
import statistics

import torch

import xai_utils as xu
from xai_utils.evaluation.profiling import timed
from xai_utils.methods.lrp import attribute


def _plain(model, x, target):
    def run():
        xg = x.detach().requires_grad_(True)
        out = model(xg)
        torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return run


def _ours(model, x, target):
    return lambda: attribute(model, x, target, "epsilon_alpha2beta1", bias=True)


def _zennit(model, x, target, name):
    from zennit.composites import EpsilonAlpha2Beta1
    from zennit.torchvision import VGGCanonizer

    canonizers = [VGGCanonizer()] if name.startswith("vgg") else None
    composite = EpsilonAlpha2Beta1(canonizers=canonizers)

    def run():
        xg = x.detach().requires_grad_(True)
        with composite.context(model) as modified:
            out = modified(xg)
            seed = torch.zeros_like(out).scatter_(1, target[:, None], 1.0)
            torch.autograd.grad(out, xg, grad_outputs=seed)
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "efficientnet_lite0"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"device {xu.device()}, input {args.size}x{args.size}")
    header = (f"{'model':<20}{'batch':>6}{'fwd+bwd s/img':>15}{'ours s/img':>12}"
              f"{'zennit s/img':>14}{'ours/fwd+bwd':>14}{'ours/zennit':>13}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        pretrained = name == "efficientnet_lite0"
        model = xu.load_model(name, pretrained=pretrained)
        for batch in args.batches:
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(batch, 3, args.size, args.size, generator=gen).to(xu.device())
            target = torch.zeros(batch, dtype=torch.long, device=x.device)
            plain, ours, theirs = (
                t / batch
                for t in timed([_plain(model, x, target), _ours(model, x, target),
                                _zennit(model, x, target, name)], x.device,
                               repeats=args.repeats, warmup=args.warmup,
                               reduce=statistics.median))
            print(f"{name:<20}{batch:>6}{plain:>15.3f}{ours:>12.3f}{theirs:>14.3f}"
                  f"{ours / plain:>14.2f}{ours / theirs:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
