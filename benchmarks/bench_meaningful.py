"""Speed of the batched perturbation masks (meaningful and extremal perturbation).

Prints, from one run: the time per optimisation step for a batch of 1 and of 8 images, as a
ratio to one forward + backward pass of the same batch (gradient w.r.t. the input, weights
frozen: the least any mask step must do; target <= 1.2x), and the total time for 8 images
in one batch against 8 single-image runs. Per-step times subtract a zero-step call, so the
one-off work (median blur, blur pyramid) is excluded from the ratio and included in totals.

    python benchmarks/bench_meaningful.py [--steps 10] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse

import torch

import xai_utils as xu
from xai_utils.evaluation.profiling import timed


def forward_backward(model, x: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    for q in model.parameters():
        q.requires_grad_(False)
    model(x).softmax(1)[:, 0].sum().backward()
    for q in model.parameters():
        q.requires_grad_(True)


def measure(model, name: str, kw: dict, x: torch.Tensor, t: torch.Tensor, steps: int,
            repeats: int, total_only: bool = False):
    """(forward+backward s, s per step, total s for `steps`) of one method on one batch."""
    def call(n: int) -> None:
        xu.explain(name, model, x, target=t, steps=n, progress=False, **kw)

    if total_only:
        return timed([lambda: call(steps)], x.device, repeats=repeats, warmup=0)[0]
    # best of `repeats` rounds each, the three taking turns
    full, ref, zero = timed([lambda: call(steps), lambda: forward_backward(model, x),
                             lambda: call(0)], x.device, repeats=repeats, warmup=0)
    return ref, (full - zero) / steps, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model = xu.load_model(args.model)
    names = list(xu.sample_images())[:8]
    x8 = xu.preprocess([xu.load_sample(n) for n in names], model)
    target = xu.predict(model, x8, k=1)[1][:, 0]
    runs = {
        "meaningful (port)": ("meaningful_perturbation", {"preset": "port"}),
        "meaningful (paper)": ("meaningful_perturbation", {"preset": "paper"}),
        "extremal (1 area)": ("extremal_perturbation", {"areas": [0.1]}),
    }
    forward_backward(model, x8)  # warm-up
    print(f"{args.model} on {xu.device()}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps per call, best of {args.repeats}")
    print(f"{'method':<20} {'batch':>5} {'fwd+bwd s':>10} {'step s':>8} {'ratio':>6}")
    totals = {}
    for label, (name, kw) in runs.items():
        for b in (1, 8):
            ref, step, full = measure(model, name, kw, x8[:b], target[:b], args.steps,
                                      args.repeats)
            print(f"{label:<20} {b:>5} {ref:>10.4f} {step:>8.4f} {step / ref:>6.2f}")
        singles = sum(measure(model, name, kw, x8[i:i + 1], target[i:i + 1], args.steps, 1,
                              total_only=True) for i in range(8))
        totals[label] = (full, singles)
    print(f"\n{'method':<20} {'8 in one batch s':>17} {'8 single runs s':>16} {'speed-up':>9}")
    for label, (batched, singles) in totals.items():
        print(f"{label:<20} {batched:>17.2f} {singles:>16.2f} {singles / batched:>8.2f}x")


if __name__ == "__main__":
    main()
