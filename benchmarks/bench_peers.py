"""Score-CAM and RISE against their reference implementations, at equal work.

    python benchmarks/bench_peers.py [--model shapes_vgg] [--images 4] [--masks 2000]

Score-CAM: ours (all B x K masked inputs in one stream of batches) against
pytorch-grad-cam's `ScoreCAM` on the same layer, both in batches of 16 masked inputs (its
default: equal memory). RISE: ours (masks drawn on the device, every image against every mask
in one stream of batches) against TorchRay's `rise` with the same number of masks, both in
batches of 32 (its default). Runs are
interleaved and the fastest of `--repeats` is kept; prints the ratios (timings are not asserted
anywhere). Peak resident memory is reported per run.
"""

from __future__ import annotations

import argparse
import os
import time

import psutil
import torch

import xai_utils as xu


def timed(fn) -> tuple[float, float]:
    proc = psutil.Process()
    start, before = time.perf_counter(), proc.memory_info().rss
    fn()
    return time.perf_counter() - start, (proc.memory_info().rss - before) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes_vgg")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--masks", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchray.attribution.rise import rise as torchray_rise

    model = xu.load_model(args.model, device_="cpu")
    side = xu.model_info(model).input_size
    pixels = torch.rand(args.images, 3, side, side, generator=torch.Generator().manual_seed(0))
    x = xu.input_spec(model).normalize(pixels)
    t = model(x).argmax(1)
    layer = xu.explain("gradcam", model, x[:1]).extras["layer"]
    module = dict(model.named_modules())[layer]

    def ours_scorecam():  # at the reference's batch of 16 masked inputs: equal memory
        xu.explain("scorecam", model, x, t, layer=layer, batch_size=16)

    def ref_scorecam():
        with ScoreCAM(model=model, target_layers=[module]) as cam:
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(i)) for i in t])

    def ours_rise():  # at the reference's batch of 32 masked inputs: equal memory
        xu.explain("rise", model, x, t, masks=args.masks, seed=0, batch_size=32)

    def ref_rise():
        with torch.no_grad():
            torchray_rise(model, x, num_masks=args.masks, batch_size=32)

    runs = {name: [] for name in ("scorecam", "scorecam_ref", "rise", "rise_ref")}
    for _ in range(args.repeats):
        for name, fn in (("scorecam", ours_scorecam), ("scorecam_ref", ref_scorecam),
                         ("rise", ours_rise), ("rise_ref", ref_rise)):
            runs[name].append(timed(fn))
    best = {k: min(v) for k, v in runs.items()}
    print(f"{args.model}, {args.images} images of {side} px, layer {layer} "
          f"({module.__class__.__name__}), {args.masks} RISE masks, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print("| method | ours s | reference s | reference / ours | RSS growth ours / ref MB |")
    print("|---|---|---|---|---|")
    for name, ref in (("scorecam", "pytorch-grad-cam ScoreCAM"), ("rise", "TorchRay rise")):
        (a, ma), (b, mb) = best[name], best[name + "_ref"]
        print(f"| {name} vs {ref} | {a:.2f} | {b:.2f} | {b / a:.2f}x | {ma:.0f} / {mb:.0f} |")


if __name__ == "__main__":
    main()
