"""Speed of batched inversion restarts ("Deep Introspection" ch. 4; Mahendran & Vedaldi 2016).

Prints, in one run: time per iteration of 10 restarts optimised together in one batch,
against one plain forward + backward pass of that batch through the same layers (target:
<= 1.2x), and against 10 sequential single-restart runs.

    python benchmarks/bench_inversion.py [--model efficientnet_lite0] [--size 96] [--iters 8]
"""

from __future__ import annotations

import argparse

import torch

import xai_utils as xu
from xai_utils import inversion as inv
from xai_utils.evaluation.profiling import timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layer", default="global_pool")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--iters", type=int, default=8)
    args = parser.parse_args()
    model = xu.load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    x = xu.preprocess(xu.load_sample("chelsea"), model, size=args.size)
    target = inv.representation(model, x, args.layer)
    kw = dict(steps=(args.iters, 0), progress=False, jitter=2)
    inv.invert_target(model, target, args.layer, args.size, restarts=2, steps=(2, 0),
                      progress=False)                                       # warm-up

    batch = x.repeat(args.restarts, 1, 1, 1).requires_grad_(True)

    def plain_passes() -> None:
        for _ in range(args.iters):
            feat = inv.layer_outputs(model, batch, [args.layer])[args.layer]
            torch.autograd.grad(feat.pow(2).sum(), batch)

    def batched_run() -> None:
        inv.invert_target(model, target, args.layer, args.size, restarts=args.restarts, **kw)

    def sequential_runs() -> None:
        for r in range(args.restarts):
            inv.invert_target(model, target, args.layer, args.size, restarts=1, seed=r, **kw)

    # one timed run each (the warm-up above is shared), in this order
    plain, batched, sequential = (
        t / args.iters for t in timed([plain_passes, batched_run, sequential_runs], x.device,
                                      repeats=1, warmup=0))

    print(f"{args.model} {args.layer}, {args.size} px, {args.restarts} restarts, "
          f"{args.iters} iterations, {torch.get_num_threads()} threads, {xu.device()}")
    print(f"{'what':<44}{'s / iteration':>14}{'ratio':>8}")
    print(f"{'forward + backward of the batch (plain)':<44}{plain:>14.3f}{1.0:>8.2f}")
    print(f"{'inversion, restarts in one batch':<44}{batched:>14.3f}{batched / plain:>8.2f}")
    print(f"{'inversion, restarts one after another':<44}{sequential:>14.3f}"
          f"{sequential / plain:>8.2f}")
    print(f"batched vs plain: {batched / plain:.2f}x (target <= 1.2x); "
          f"sequential / batched: {sequential / batched:.2f}x")


if __name__ == "__main__":
    main()
