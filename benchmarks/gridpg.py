"""The grid pointing game (GridPG) and its disconnected form (DiFull; Rao et al. CVPR 2022)
on offline photos.

    python benchmarks/gridpg.py [--grids 20] [--steps 0] [--min-probability 0.3] [--difull]
                                [--auc 16] [--plot figures/gridpg_scores.png]

EfficientNet-Lite0; 2 x 2 grids of four offline photos (the samples and `EXTRA`) of different
classes, each classified with p >= --min-probability alone (Rao et al.: 0.99 on ImageNet
validation images; no offline photo reaches that here), each cell at the model's input size
(a 448 px grid). Every cell's class is explained on the grid; the table gives, per method,
the localisation score (positive attribution in the cell / in the grid: mean, median,
quartiles) and how often the map's maximum lies in the right cell. LRP is scored with each
best-practice composite (Kohlbrenner et al. 2020), the thesis one and `zplus_box`, and with
each class-contrastive start (CLRP, SGLRP) on the papers' `zplus_box` and on the default
composite. The peer methods with one or a few dozen passes per map are rows too (Grad-CAM++,
LayerCAM, guided backprop, Guided Grad-CAM, Integrated Gradients, SmoothGrad, at their
defaults); Score-CAM (one forward per channel: 1280 at the last layer) and RISE (thousands
of masked forwards) are left out at 448 px on a CPU. `--steps N` adds the optimisation
methods with N iterations (slow on a CPU).
`--difull`: every cell through the features alone, its logits from its own part of the
stitched feature map (`evaluation.grid.Disconnected`), so any attribution outside the cell
is wrong; Grad-CAM reads the stitched map, CAM does not apply (no pooling head on the
wrapper), occlusion scores the logit (the softmax would couple the
cells), and the optimisation methods, which score probabilities, are not run there.
`--auc N` adds, on GridPG, each map's deletion AUC (the most salient pixels replaced by a
blurred copy of the grid, the baseline that separates methods best on the shapes:
`benchmarks/deletion_baselines.py`) and insertion AUC (revealed on that blurred copy) of the
cell's class probability, N points per curve, each divided by that probability on the
intact grid (so 1 means "as probable as on the grid" throughout), and a random-map row as
their floor. `--plot FILE` draws the localisation scores of every row as box plots (the
papers' figure); `--save FILE.npz` keeps them and `--add` draws saved rows of other runs beside
them (e.g. the optimisation methods, run with more steps on fewer grids).
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import numpy as np
import torch

import xai_utils as xu
from xai_utils.core.inputs import model_info
from xai_utils.data.images import sample_images
from xai_utils.evaluation.grid import (
    Disconnected,
    localisation,
    make_grids,
    peak_in_cell,
    summarise,
)
from xai_utils.evaluation.harness import method_settings
from xai_utils.evaluation.metrics import deletion_auc, gaussian_blur, insertion_auc
from xai_utils.methods.lrp import CONTRAST_COMPOSITE, CONTRASTS, DEFAULT_COMPOSITE

# photos beyond the samples that the model classifies confidently (a file of an installed
# package; scikit-image's "camera": CC0, photographer Lav Varshney)
EXTRA = {"camera": ("skimage", "data/camera.png")}
COMPOSITES = ["thesis", "epsilon_plus_flat", "epsilon_alpha2beta1_flat", "epsilon_gamma_box",
              "epsilon_plus", CONTRAST_COMPOSITE]


def package_file(package: str, relative: str) -> Path:
    return Path(importlib.import_module(package).__file__).parent / relative


def configurations(model, steps: int, side: int) -> list[tuple[str, str, dict]]:
    """(label, method, parameters) of every row."""
    rows = [("gradient", "gradient", {}), ("gradcam", "gradcam", {}), ("cam", "cam", {})]
    rows += [(name, name, {}) for name in ("gradcampp", "layercam", "guided_backprop",
                                           "guided_gradcam", "integrated_gradients",
                                           "smoothgrad")]
    rows += [(f"lrp {c}", "lrp", {"composite": c}) for c in COMPOSITES]
    rows += [(f"lrp {comp} {c}", "lrp", {"composite": comp, "contrast": c})
             for comp in (CONTRAST_COMPOSITE, DEFAULT_COMPOSITE) for c in CONTRASTS]
    rows.append(("occlusion", "occlusion", {"window": side // 7, "stride": side // 14}))
    if steps:
        settings = method_settings(model, steps=steps)
        for name in ("meaningful_perturbation", "extremal_perturbation", "perturbation_cnn"):
            rows.append((f"{name}, {steps} steps", name, dict(settings[name])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=20)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--min-probability", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--only", nargs="+", help="rows whose label starts with one of these")
    parser.add_argument("--difull", action="store_true",
                        help="the disconnected setting: each cell's logits see that cell only")
    parser.add_argument("--plot", help="save box plots of the localisation scores here")
    parser.add_argument("--save", help="save the localisation scores (.npz, one array per row)")
    parser.add_argument("--add", nargs="+", default=[],
                        help="--plot also draws the rows of these --save files")
    parser.add_argument("--auc", type=int, default=0,
                        help="GridPG only: deletion / insertion AUCs with N points per curve")
    args = parser.parse_args()
    if args.auc and args.difull:
        parser.error("--auc applies to GridPG, not to --difull")
    model = xu.load_model("efficientnet_lite0")
    photos = {**sample_images(), **{name: package_file(*where) for name, where in EXTRA.items()}}
    grids = make_grids(model, photos, args.grids, args.min_probability)
    n = len(grids.images)
    x = grids.images.repeat_interleave(4, dim=0).to(xu.device())
    targets = grids.targets.flatten().to(xu.device())
    cells = torch.arange(4).repeat(n).to(xu.device())
    rows = configurations(model, 0 if args.difull else args.steps, x.shape[-1])
    if args.difull:  # class k of cell c is output c K + k; Grad-CAM reads the stitched map
        targets = targets + cells * model_info(model).num_classes
        model = Disconnected(model)
        # and occlusion scores the logit: a softmax over all four cells' logits would let
        # the other cells change the explained probability
        extra = {"gradcam": {"layer": "stitch"}, "occlusion": {"output": "logit"}}
        rows = [(label, method, {**params, **extra.get(method, {})})
                for label, method, params in rows]
    print(("DiFull: " if args.difull else "GridPG: ")
          + f"{n} grids of 4 of {len(grids.names)} photos ("
          + ", ".join(f"{name} {p:.2f}" for name, p in zip(grids.names, grids.probability,
                                                           strict=True))
          + f"), {x.shape[-1]} px, device {xu.device()}")
    if args.only:
        rows = [row for row in rows if row[0].startswith(tuple(args.only))]
    if args.auc:
        rows.append(("random", "random", {}))
        blurred = gaussian_blur(x)
        with torch.no_grad():
            p0 = torch.cat([model(x[i:i + args.batch]).softmax(1) for i in
                            range(0, len(x), args.batch)]).gather(1, targets[:, None])[:, 0]
        print(f"cell class probability on the intact grid: mean {float(p0.mean()):.3f}, "
              f"median {float(p0.median()):.3f}; AUCs below are divided by it")
    auc = ("| deletion | insertion ", "|---|---") if args.auc else ("", "")
    print(f"| method | maps | mean [95% interval over grids] | median | quartiles | peak in cell "
          f"{auc[0]}| seconds |")
    print(f"|---|---|---|---|---|---{auc[1]}|---|")
    gen = torch.Generator().manual_seed(0)
    distributions = {}
    for label, method, params in rows:
        start, maps = time.perf_counter(), []
        try:
            for i in range(0, len(x), args.batch):
                xb, tb = x[i:i + args.batch], targets[i:i + args.batch]
                maps.append(torch.rand(xb.shape[0], *xb.shape[2:], generator=gen).to(xb)
                            if method == "random" else
                            xu.explain(method, model, xb, tb, **params).saliency.detach())
        except (xu.MethodNotApplicable, RuntimeError) as err:
            print(f"| {label} | does not apply: {str(err)[:90]} | | | | | |")
            continue
        maps = torch.cat(maps)
        scores = localisation(maps, cells).cpu().numpy()
        distributions[label] = scores
        s = summarise(scores)
        peak = float(peak_in_cell(maps, cells).float().mean())
        aucs = ""
        if args.auc:
            d = deletion_auc(model, x, maps, targets, args.auc, baseline=blurred, batch_size=16)
            ins = insertion_auc(model, x, maps, targets, args.auc, baseline=blurred, batch_size=16)
            aucs = f"| {float((d / p0).mean()):.3f} | {float((ins / p0).mean()):.3f} "
        print(f"| {label} | {len(scores)} | {s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}] | "
              f"{s['median']:.3f} | "
              f"{s['q25']:.2f}-{s['q75']:.2f} | {peak:.0%} {aucs}| "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    print("a map spread evenly over the grid scores 0.25; peak in cell by chance: 25 %")
    if args.save:
        np.savez(args.save, **distributions)
    if args.plot:
        for path in args.add:  # rows of other runs, e.g. optimisation methods on fewer grids
            with np.load(path) as saved:
                distributions |= {f"{k} ({len(v)} maps)": v for k, v in saved.items()}
        plot(distributions, args.plot, "DiFull" if args.difull else "GridPG", len(grids.images))


def plot(distributions: dict, path: str, setting: str, grids: int) -> None:
    """Box plots of the localisation scores, one row per method (Rao et al.'s figures)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(distributions)[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(labels) + 1.5), layout="constrained")
    ax.boxplot([distributions[k] for k in labels], orientation="horizontal", whis=(5, 95),
               flierprops={"markersize": 3})
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.axvline(0.25, color="grey", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("positive attribution in the cell / in the grid (dashed: an even map)")
    ax.set_title(f"{setting}, EfficientNet-Lite0, {grids} grids x 4 cells\n"
                 "boxes: quartiles; whiskers: 5th-95th percentile", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"box plots: {path}")


if __name__ == "__main__":
    main()
