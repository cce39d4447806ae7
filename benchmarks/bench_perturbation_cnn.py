"""Speed of the batched perturbation CNN ("Deep Explanation") against plain forward+backward passes.

Prints, from one run: the time of one optimisation step (generator forward, classifier
forward + backward, generator backward, Adam; a `--steps` run minus a one-step run, best of
two) for a batch of 1 and of 8 images, each as a ratio to one forward + backward pass of the
classifier on the same batch (gradient with respect to the input); and the total for 8
images optimised in one batch against 8 single-image runs of the same number of steps.

    python benchmarks/bench_perturbation_cnn.py [--model efficientnet_lite0] [--steps 6]
"""

from __future__ import annotations

import argparse

import torch

import xai_utils as xu
from xai_utils.evaluation.profiling import timed
from xai_utils.methods import perturbation_cnn as pc

NAMES = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle", "china", "flower",
         "grace_hopper"]


def forward_backward(model, x: torch.Tensor, target: torch.Tensor):
    """One forward + backward of the target probability w.r.t. the input."""
    def run() -> None:
        xi = x.detach().requires_grad_(True)
        prob = model(xi).softmax(1).gather(1, target[:, None]).sum()
        torch.autograd.grad(prob, xi)
    return run


def optimize(model, x: torch.Tensor, target: torch.Tensor, steps: int):
    """`steps` optimisation steps of the whole batch."""
    return lambda: pc.optimize(model, x, target, steps=steps, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    model = xu.load_model(args.model)
    x8 = xu.preprocess([xu.load_sample(n) for n in NAMES], model)
    t8 = model(x8).argmax(1).detach()
    print(f"model {args.model} on {xu.device()}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps per run")
    pc.optimize(model, x8[:1], t8[:1], steps=1, progress=False)  # warm-up
    print(f"{'batch':>5} {'fwd+bwd s':>10} {'step s':>9} {'step / fwd+bwd':>15}")
    dev = x8.device
    for b in (1, 8):
        x, t = x8[:b], t8[:b]
        (fb,) = timed([forward_backward(model, x, t)], dev, repeats=args.repeats, warmup=1)
        # the difference to a one-step run leaves out the set-up and the final evaluation;
        # best of two (long run, one-step run) pairs
        pairs = [timed([optimize(model, x, t, args.steps), optimize(model, x, t, 1)], dev,
                       repeats=1, warmup=0) for _ in range(2)]
        step = min((long - short) / (args.steps - 1) for long, short in pairs)
        print(f"{b:>5} {fb:>10.3f} {step:>9.3f} {step / fb:>15.2f}")
    together, *singles = timed(
        [optimize(model, x8, t8, args.steps)]
        + [optimize(model, x8[i:i + 1], t8[i:i + 1], args.steps) for i in range(8)],
        dev, repeats=1, warmup=0)
    separate = sum(singles)
    print(f"8 images, {args.steps} steps: one batch {together:.2f} s, 8 single runs "
          f"{separate:.2f} s, speed-up {separate / together:.2f}x")


if __name__ == "__main__":
    main()
