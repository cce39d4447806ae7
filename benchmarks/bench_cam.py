"""Time CAM and Grad-CAM per batch of images against pytorch-grad-cam, Captum and one plain
forward + backward pass of the same model (all in one run, interleaved, median of repeats).

    python benchmarks/bench_cam.py [--models efficientnet_lite0 resnet18] [--batch 8]

Every method returns maps at input resolution for the same targets: ours bilinear-upsampled,
pytorch-grad-cam through its NumPy/cv2 pipeline, Captum's LayerGradCam followed by
LayerAttribution.interpolate. "forward+backward" is model(x), then backward of the summed
target logits into every parameter; "forward" is a no-grad forward pass.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import xai_utils as xu
from xai_utils.evaluation.profiling import timed
from xai_utils.methods import cam as C


def bench(name: str, batch: int, repeats: int) -> dict[str, float]:
    from captum.attr import LayerAttribution, LayerGradCam
    from pytorch_grad_cam import GradCAM as PGC
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = xu.load_model(name, pretrained=name in ("efficientnet_lite0", "shapes_vgg"))
    names = ["chelsea", "coffee", "rocket", "astronaut", "motorcycle", "china", "flower",
             "grace_hopper"]
    x = xu.preprocess([xu.load_sample(names[i % len(names)]) for i in range(batch)], model)
    dev = x.device
    layer = C.default_layer(model)
    module = xu.get_layer(model, layer)
    with torch.no_grad():
        target = model(x).argmax(1)
    ours_grad, ours_cam = C.GradCAM(model, layer), C.CAM(model, layer)
    captum = LayerGradCam(model, module)
    pgc = PGC(model=model, target_layers=[module])
    pgc_targets = [ClassifierOutputTarget(int(t)) for t in target]

    def fwd_bwd():
        model(x).gather(1, target[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    def forward():
        with torch.no_grad():
            model(x)

    def captum_run():
        low = captum.attribute(x, target=target, relu_attributions=True)
        LayerAttribution.interpolate(low, tuple(x.shape[-2:]), "bilinear")

    fns = {
        "forward": forward,
        "forward+backward": fwd_bwd,
        "ours Grad-CAM": lambda: ours_grad(x, target),
        "ours CAM": lambda: ours_cam(x, target),
        "pytorch-grad-cam GradCAM": lambda: pgc(input_tensor=x, targets=pgc_targets),
        "Captum LayerGradCam": captum_run,
    }
    try:  # one warm-up round, then interleaved, so load changes hit every method alike
        times = timed(list(fns.values()), dev, repeats=repeats, warmup=1,
                      reduce=statistics.median)
    finally:
        pgc.activations_and_grads.release()
    return dict(zip(fns, times, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet18"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"device {xu.device()}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.repeats}")
    for name in args.models:
        t = bench(name, args.batch, args.repeats)
        ref = min(t["pytorch-grad-cam GradCAM"], t["Captum LayerGradCam"])
        print(f"\n{name}\n{'method':<26}{'ms/batch':>10}{'/ fwd+bwd':>11}{'/ pgc':>8}"
              f"{'/ captum':>10}{'/ best ref':>12}")
        for key, sec in t.items():
            print(f"{key:<26}{1000 * sec:>10.1f}{sec / t['forward+backward']:>11.2f}"
                  f"{sec / t['pytorch-grad-cam GradCAM']:>8.2f}"
                  f"{sec / t['Captum LayerGradCam']:>10.2f}{sec / ref:>12.2f}")


if __name__ == "__main__":
    main()
