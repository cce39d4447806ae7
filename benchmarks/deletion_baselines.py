"""Which deletion / insertion baseline separates methods from the random floor on the shapes.

    python benchmarks/deletion_baselines.py [--n 200] [--steps 16] [--iterations 50]

Deletion to black (the shapes model's input zero) lets every map, random ones included, kill
the class at about the same rate: a black region reads as neither shape. For each baseline
(black, mid-grey, a blurred copy of the image) the table gives each method's mean deletion AUC
(lower = better) and insertion AUC (higher = better) on `--n` shapes images, the random
floor's, and the gap to it in units of the random floor's standard error.
"""

from __future__ import annotations

import argparse

import torch

import xai_utils as xu
from xai_utils import evaluation as ev
from xai_utils.data import shapes
from xai_utils.evaluation.metrics import deletion_auc, gaussian_blur, insertion_auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--iterations", type=int, default=50,
                        help="steps of the optimisation methods")
    args = parser.parse_args()
    model = xu.load_model("shapes_vgg")
    data = shapes.generate(args.n, seed=11, device=xu.device())
    x, target = data.images, data.labels
    settings = ev.method_settings(model, args.iterations)
    maps = {name: ev.run_method(model, x, target, name, params)
            for name, params in settings.items()}
    maps["random"] = ev.baseline_maps("random", args.n, *x.shape[-2:], device=x.device)
    baselines = {"black": torch.zeros_like(x), "grey": torch.full_like(x, 0.5),
                 "blur": gaussian_blur(x)}
    print(f"shapes_vgg, {args.n} shapes images, {args.steps} steps per curve, optimisation "
          f"methods {args.iterations} iterations; gap = (random - method) / SE(random) for "
          "deletion, (method - random) / SE(random) for insertion")
    print("| baseline | method | deletion AUC | gap | insertion AUC | gap |")
    print("|---|---|---|---|---|---|")
    for kind, base in baselines.items():
        scores = {name: (deletion_auc(model, x, m, target, args.steps, base),
                         insertion_auc(model, x, m, target, args.steps, base))
                  for name, m in maps.items()}
        rand_del, rand_ins = scores["random"]
        se_del = float(rand_del.std() / len(rand_del) ** 0.5)
        se_ins = float(rand_ins.std() / len(rand_ins) ** 0.5)
        for name, (dele, ins) in scores.items():
            gap_del = (float(rand_del.mean()) - float(dele.mean())) / max(se_del, 1e-9)
            gap_ins = (float(ins.mean()) - float(rand_ins.mean())) / max(se_ins, 1e-9)
            print(f"| {kind} | {name} | {float(dele.mean()):.3f} | {gap_del:+.1f} | "
                  f"{float(ins.mean()):.3f} | {gap_ins:+.1f} |", flush=True)


if __name__ == "__main__":
    main()
