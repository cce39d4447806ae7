"""Timings of sliding-window occlusion and of the feature-occlusion metrics, in one run.

    python benchmarks/bench_occlusion.py [--model shapes_vgg] [--images 4] [--repeat 2]
        [--batch 64] [--random-weights]

Prints, per setting: our sliding-window occlusion against Captum's `Occlusion` with the same
window, stride, baseline and number of images per forward pass (Captum applies each
perturbation to the whole batch, so it gets batch // images perturbations per evaluation;
target: at least 2x faster), both against one plain forward+backward pass of the batch;
and the exhaustive metrics for 10 features (1024 occluded subsets, pixelisation, then
`analyze`) against 1024 plain forward passes in the same batches, memory format and
BatchNorm merge (target: within 1.2x). Our occlusion feeds the model channels-last batches
with its BatchNorms merged into the layers before them (the same outputs, faster forwards on
a CPU) and recomputes only each window's receptive field until global pooling (incremental
inference, also exact); Captum gets the model as it is. The timed
functions run in turn, `--repeat` rounds, and each keeps its fastest round, so a slow spell
of the machine hits all of them alike.
"""

from __future__ import annotations

import argparse

import torch
from captum.attr import Occlusion

import xai_utils as xu
from xai_utils import feature_occlusion as fx
from xai_utils.core.model_state import merged_batchnorm
from xai_utils.evaluation.profiling import timed


def disks(n: int, size: int, radius: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.randint(radius, size - radius, (n, 2), generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) <= radius**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes_vgg")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--random-weights", action="store_true",
                        help="untrained weights (any torchvision model offline; timing only)")
    args = parser.parse_args()
    model = xu.load_model(args.model, pretrained=not args.random_weights)
    size = model.xai.input_size
    x = torch.rand(args.images, 3, size, size, device=xu.device())
    target = model(x).argmax(1)
    window, stride = size // 7, size // 14

    def fwd_bwd():
        xx = x.clone().requires_grad_(True)
        model(xx).gather(1, target[:, None]).sum().backward()

    def ours():
        xu.explain("occlusion", model, x, target, window=window, stride=stride, baseline=0.0,
                   output="logit", batch_size=args.batch)

    def captum():  # each perturbation covers the whole batch: the same images per forward
        with torch.no_grad():
            Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window),
                                       strides=(3, stride, stride), baselines=0.0,
                                       target=target,
                                       perturbations_per_eval=max(1, args.batch // len(x)))

    def captum_default():
        with torch.no_grad():
            Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window),
                                       strides=(3, stride, stride), baselines=0.0,
                                       target=target)

    windows = ((size - window + stride - 1) // stride + 1) ** 2
    t_fb, t_ours, t_cap, t_def = timed([fwd_bwd, ours, captum, captum_default], x.device,
                                       repeats=args.repeat, warmup=0)
    print(f"device {xu.device()}, threads {torch.get_num_threads()}, model {args.model}, "
          f"{args.images} images {size}px")
    print(f"\nsliding-window occlusion: window {window}, stride {stride}, {windows} windows "
          f"per image, {args.batch} images per forward")
    print(f"{'':<28}{'seconds':>9}{'x fwd+bwd':>11}{'x ours':>9}")
    rows = (("forward+backward", t_fb), ("ours", t_ours), ("captum, same batch", t_cap),
            (f"captum, default ({len(x)}/forward)", t_def))
    for name, t in rows:
        print(f"{name:<28}{t:9.3f}{t / t_fb:11.1f}{t / t_ours:9.2f}")
    print(f"speed-up over captum: {t_cap / t_ours:.2f}x (same batch), "
          f"{t_def / t_ours:.2f}x (captum's default, one perturbation per evaluation)")

    masks = disks(10, size, max(3, size // 30)).to(x.device)
    chosen = fx.subsets(10)
    one = x[0]
    # in the memory format and with the merge `fx.evaluate` uses: the ratio is its overhead
    plain = one[None].expand(args.batch, -1, -1, -1).contiguous(
        memory_format=torch.channels_last)

    def forwards():
        with torch.no_grad(), merged_batchnorm(model):
            for _ in range(0, len(chosen), args.batch):
                model(plain).softmax(1)

    def metrics():
        probs = fx.evaluate(model, one, masks, chosen, "pixelate", batch_size=args.batch)
        fx.analyze(probs, chosen)

    low, high = fx.pixel_range(model)

    def occlusion_alone():
        occluder, batch = fx.Occluder(one, masks, "pixelate", low=low, high=high), None
        for s in range(0, len(chosen), args.batch):
            batch = occluder(chosen[s:s + args.batch], into=batch)

    t_fw, t_me, t_oc = timed([forwards, metrics, occlusion_alone], x.device,
                             repeats=args.repeat, warmup=0)
    print("\nexhaustive metrics, 10 features = 1024 subsets (pixelate, k=4)")
    print(f"{'1024 plain forwards':<28}{t_fw:9.3f}")
    print(f"{'occlude + forward + analyze':<28}{t_me:9.3f}   ratio {t_me / t_fw:.2f}")
    print(f"{'occlusion alone (1024)':<28}{t_oc:9.3f}")


if __name__ == "__main__":
    main()
