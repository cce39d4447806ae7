"""Sliding-window occlusion against Captum's `Occlusion` across architectures, in one run.

    python benchmarks/bench_occlusion_zoo.py [--models torchvision:resnet50 ...] [--repeat 1]

Random weights (timing only), one 224 px image, window 32, stride 16, the same number of
perturbations per forward pass for both (15). Per model: the estimated cost of a window
against a full pass (`extras["incremental_cost"]`), whether the incremental path ran, our
seconds, Captum's, and Captum / ours. Each model gets one untimed forward first; the two
then take turns (`profiling.timed`), so a noisy spell hits both. Targets: at least 2x on the
convolutional models, at least 1x everywhere.
"""

from __future__ import annotations

import argparse

import torch
from captum.attr import Occlusion

import xai_utils as xu
from xai_utils.evaluation.profiling import timed

MODELS = ["torchvision:resnet50", "torchvision:densenet121", "torchvision:convnext_tiny",
          "torchvision:swin_t", "torchvision:vit_b_16"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--per-pass", type=int, default=15)
    args = parser.parse_args()
    window, stride = 32, 16
    print(f"device {xu.device()}, threads {torch.get_num_threads()}, window {window}, "
          f"stride {stride}, {args.per_pass} perturbations per forward, random weights")
    print("| model | est. cost / full pass | incremental | ours (s) | Captum (s) | Captum / ours |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        print(row(name, window, stride, args.per_pass, args.repeat), flush=True)


def row(name: str, window: int, stride: int, per_pass: int, repeat: int) -> str:
    """One model's line of the table."""
    model = xu.load_model(name, pretrained=False)
    x = torch.rand(1, 3, 224, 224, device=xu.device())
    with torch.no_grad():
        target = model(x).argmax(1)
    extras = {}

    def ours():
        extras.update(xu.explain("occlusion", model, x, target, window=window, stride=stride,
                                 baseline=0.0, output="logit", batch_size=per_pass).extras)

    def captum():
        with torch.no_grad():
            Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window),
                                       strides=(3, stride, stride), baselines=0.0,
                                       target=target, perturbations_per_eval=per_pass)

    t_ours, t_captum = timed([ours, captum], x.device, repeats=repeat, warmup=0)
    return (f"| {name} | {extras['incremental_cost']:.3f} | {extras['incremental']} | "
            f"{t_ours:.2f} | {t_captum:.2f} | {t_captum / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
