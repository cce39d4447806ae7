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
import time

import torch

import xai_utils as xu
from xai_utils.methods import perturbation_cnn as pc

NAMES = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle", "china", "flower",
         "grace_hopper"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def forward_backward(model, x: torch.Tensor, target: torch.Tensor, repeats: int) -> float:
    """Seconds per forward + backward of the target probability w.r.t. the input."""
    times = []
    for _ in range(repeats + 1):
        _sync(x.device)
        start = time.perf_counter()
        xi = x.detach().requires_grad_(True)
        prob = model(xi).softmax(1).gather(1, target[:, None]).sum()
        torch.autograd.grad(prob, xi)
        _sync(x.device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def run(model, x: torch.Tensor, target: torch.Tensor, steps: int) -> float:
    """Seconds for `steps` optimisation steps of the whole batch."""
    _sync(x.device)
    start = time.perf_counter()
    pc.optimize(model, x, target, steps=steps, progress=False)
    _sync(x.device)
    return time.perf_counter() - start


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
    for b in (1, 8):
        fb = forward_backward(model, x8[:b], t8[:b], args.repeats)
        # the difference to a one-step run leaves out the set-up and the final evaluation
        step = min((run(model, x8[:b], t8[:b], args.steps) - run(model, x8[:b], t8[:b], 1))
                   / (args.steps - 1) for _ in range(2))
        print(f"{b:>5} {fb:>10.3f} {step:>9.3f} {step / fb:>15.2f}")
    together = run(model, x8, t8, args.steps)
    separate = sum(run(model, x8[i:i + 1], t8[i:i + 1], args.steps) for i in range(8))
    print(f"8 images, {args.steps} steps: one batch {together:.2f} s, 8 single runs "
          f"{separate:.2f} s, speed-up {separate / together:.2f}x")


if __name__ == "__main__":
    main()
