"""Extremal perturbation, ours against TorchRay's reference, at TorchRay's own budget.

    python benchmarks/extremal_vs_torchray.py [--images chelsea coffee] [--steps 800]
                                              [--areas 0.05 0.1 0.2]

Both run the preservation game (Fong, Patrick & Vedaldi, ICCV 2019, arXiv:1910.08485) on
efficientnet_lite0 for the network's top class, with the same number of SGD steps (800 by
default: TorchRay's `max_iter`, so ours runs TorchRay's own penalty schedule, growth 1.0035
per step) and TorchRay's defaults otherwise. Per image and area the table prints:

- area: the mask's mean over the image (TorchRay's target counts a margin around the image,
  so its masks cover more than the requested area; see `xai_utils.methods.extremal`);
- IoU: intersection over union of the two masks' top-`area` pixels;
- logit: the target logit on the blur-pyramid input that each mask itself produces;
- logit@area: the same with each mask cut to exactly its top-`area` pixels (sharp, the rest
  at the pyramid's strongest blur): the fair test, since masks of different areas are not
  comparable. This is the quantity both methods maximise (their objective), not an
  independent score of the maps.
"""

from __future__ import annotations

import argparse
import time

import torch

import xai_utils as xu
from xai_utils.evaluation import references as ref
from xai_utils.methods.extremal import apply_pyramid, blur_pyramid


@torch.no_grad()
def kept_logits(model, pyramid, masks, target, areas, cut: bool) -> torch.Tensor:
    """B x A target logits on the inputs the masks (B x A x H x W) produce; with `cut`,
    each mask is first replaced by its top-`area` pixels (ones) and zeros elsewhere."""
    out = []
    for j, a in enumerate(areas):
        m = masks[:, j]
        if cut:
            m = ref.top_fraction(m, a).to(pyramid.dtype)
        out.append(model(apply_pyramid(pyramid, m[:, None])).gather(1, target[:, None])[:, 0])
    return torch.stack(out, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=["chelsea", "coffee"])
    parser.add_argument("--areas", nargs="+", type=float, default=[0.05, 0.1, 0.2])
    parser.add_argument("--steps", type=int, default=800)
    args = parser.parse_args()

    model = xu.load_model("efficientnet_lite0")
    x = xu.preprocess([xu.load_image(n) for n in args.images], model)
    with torch.no_grad():
        full = model(x)
    target = full.argmax(1)
    start = time.perf_counter()
    ours = xu.explain("extremal_perturbation", model, x, target=target, areas=args.areas,
                      steps=args.steps, growth=1.0035, progress=False).extras["masks"]
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    theirs = ref.extremal_torchray(model, x, target, args.areas, steps=args.steps)
    t_theirs = time.perf_counter() - start
    pyramid = blur_pyramid(x)
    masks = {"ours": ours, "TorchRay": theirs}
    logit = {k: kept_logits(model, pyramid, m, target, args.areas, False) for k, m in masks.items()}
    cut = {k: kept_logits(model, pyramid, m, target, args.areas, True) for k, m in masks.items()}
    print(f"efficientnet_lite0, {args.steps} SGD steps each; ours {t_ours:.0f} s (one batch), "
          f"TorchRay {t_theirs:.0f} s (one image at a time)\n")
    print("| image | class (logit) | area | area ours / TorchRay | IoU | logit ours / TorchRay "
          "| logit@area ours / TorchRay |")
    print("|---|---|---|---|---|---|---|")
    for i, name in enumerate(args.images):
        label = f"{xu.class_name(model, int(target[i]))} ({float(full[i, target[i]]):.2f})"
        for j, a in enumerate(args.areas):
            iou = float(ref.top_overlap(ours[i:i + 1, j], theirs[i:i + 1, j], a)[0])
            print(f"| {name} | {label} | {a:.2f} | {float(ours[i, j].mean()):.3f} / "
                  f"{float(theirs[i, j].mean()):.3f} | {iou:.2f} | "
                  f"{float(logit['ours'][i, j]):.2f} / {float(logit['TorchRay'][i, j]):.2f} | "
                  f"{float(cut['ours'][i, j]):.2f} / {float(cut['TorchRay'][i, j]):.2f} |")
    diff = (cut["ours"] - cut["TorchRay"]).flatten()
    se = float(diff.std() / len(diff) ** 0.5) if len(diff) > 1 else float("nan")
    print(f"\nlogit@area, ours minus TorchRay over {len(diff)} image-area pairs (not "
          f"independent): mean "
          f"{float(diff.mean()):+.2f} (standard error {se:.2f}); ours higher on "
          f"{int((diff > 0).sum())}, lower on {int((diff < 0).sum())}, equal on "
          f"{int((diff == 0).sum())}")


if __name__ == "__main__":
    main()
