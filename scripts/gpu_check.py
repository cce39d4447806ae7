"""`make gpu-check`: every method on the GPU against the CPU, leaks, speed, full step counts.

On a machine with CUDA (at most a few minutes on one GPU):
  (a) parity: every registered method on CPU and GPU, same inputs and seeds; the maps'
      relative maximum difference and Pearson r, against a tolerance per kind of method;
  (b) leaks: `--calls` explanations per method on the GPU, `torch.cuda.memory_allocated`
      after the last against after the first (no growth allowed), hooks left;
  (c) notebook 08's speed and peak-memory table, on the GPU;
  (d) the optimisation methods at their papers' full step counts on the photos, timed;
  (e) the dataset runner under torchrun on every GPU (NCCL; gloo in the dry run) against
      one CPU process: the same targets and predictions, maps within 1e-2 of their maximum.
Without CUDA it says so and exits 0. `--dry-run` runs the same code on the CPU twice, at
tiny sizes, so that the script itself is tested on machines without a GPU.
Writes the report to build/gpu_check.md as well.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

import xai_utils as xu
from xai_utils import evaluation as ev
from xai_utils.data import shapes
from xai_utils.evaluation.references import pearson

ROOT = Path(__file__).resolve().parents[1]
# Single-pass methods are deterministic up to float rounding: the maps must agree closely.
# The optimisation methods follow their own trajectory from the first rounding difference
# (chaotic over hundreds of steps), so only the maps' correlation is asked of them.
EXACT_REL, CHAOTIC_R = 1e-3, 0.9
FULL_STEPS = {"perturbation_cnn": {"steps": 1000},
              "meaningful_perturbation": {"preset": "paper", "steps": 300},
              "extremal_perturbation": {"areas": [0.05, 0.1, 0.2], "steps": 800}}


def inputs(model_name: str, model, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    if model_name == "shapes_vgg":
        data = shapes.generate(n, seed=0, device=device)
        return data.images, data.labels
    names = ["chelsea", "coffee", "rocket", "astronaut"][:n]
    x = xu.preprocess([xu.load_sample(k) for k in names], model).to(device)
    with torch.no_grad():
        return x, model(x).argmax(1)


def parity(model_name: str, devices, n: int, steps: int) -> list[dict]:
    """(a) Every method's map on devices[0] against devices[1]."""
    models = [xu.load_model(model_name).to(d) for d in devices]
    x, t = inputs(model_name, models[0], n, devices[0])
    rows = []
    for name in xu.methods():
        settings = [ev.method_settings(m, steps)[name] for m in models]
        a, b = (xu.explain(name, m, x.to(d), t.to(d), **s).saliency.double().cpu()
                for m, d, s in zip(models, devices, settings, strict=True))
        rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
        r = pearson(a, b)
        chaotic = xu.method_info(name).iterative
        ok = r >= CHAOTIC_R if chaotic else rel <= EXACT_REL
        rows.append({"model": model_name, "method": name, "max rel. diff": rel, "pearson": r,
                     "tolerance": f"r >= {CHAOTIC_R}" if chaotic else f"rel <= {EXACT_REL:g}",
                     "ok": "yes" if ok else "NO"})
    return rows


def leaks(model_name: str, device, calls: int) -> list[dict]:
    """(b) Memory after `calls` explanations against after the first, per method: no growth
    of CUDA's allocated memory, no tensors or hooks left. (On a CPU, in the dry run, the
    memory is the resident set, which the allocator moves by megabytes: only tensors and
    hooks are judged there.)"""
    cuda = device.type == "cuda"
    model = xu.load_model(model_name).to(device)
    x, t = inputs(model_name, model, 1, device)
    settings = ev.method_settings(model, 3)
    rows = []
    for name in xu.methods():
        g = ev.memory_growth(model, x, t, name, settings[name], calls)
        rows.append({"model": model_name, "method": name, "calls": calls,
                     "growth MB": g["growth_mb"], "tensors growth": g["tensors_growth"],
                     "hooks": g["hooks"],
                     "ok": "yes" if (g["growth_mb"] <= 0 or not cuda) and g["tensors_growth"] <= 0
                     and g["hooks"] == 0 else "NO"})
    return rows


def full_steps(model_name: str, device, n: int, scale: float = 1.0) -> list[dict]:
    """(d) The optimisation methods at their papers' step counts (`scale` shortens them)."""
    model = xu.load_model(model_name).to(device)
    x, t = inputs(model_name, model, n, device)
    rows = []
    for name, params in FULL_STEPS.items():
        params = params | {"steps": max(1, int(params["steps"] * scale))}
        ev.synchronize(device)
        start = time.perf_counter()
        xu.explain(name, model, x, t, progress=False, **params)
        ev.synchronize(device)
        rows.append({"model": model_name, "method": name, "images": len(x),
                     "steps": params["steps"], "seconds": time.perf_counter() - start})
    return rows


def dataset_run(device: torch.device, n: int) -> list[dict]:
    """(e) `python -m xai_utils explain` on one CPU process against torchrun on `device`
    (one process per GPU: NCCL; on the CPU: gloo)."""
    procs = torch.cuda.device_count() if device.type == "cuda" else 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["explain", "--method", "gradcam", "--model", "shapes_vgg", "--data", f"shapes:{n}",
            "--batch-size", "8", "--workers", "0", "--no-progress"]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "cpu.zarr", Path(tmp) / "dist.zarr"
        subprocess.run([sys.executable, "-m", "xai_utils", *args, "--out", str(one),
                        "--device", "cpu"], check=True, env=env, cwd=ROOT)
        start = time.perf_counter()
        dist = [] if device.type == "cuda" else ["--device", "cpu"]  # cuda:LOCAL_RANK
        subprocess.run([torchrun, "--standalone", f"--nproc_per_node={procs}", "-m",
                        "xai_utils", *args, "--out", str(many), *dist],
                       check=True, env=env, cwd=ROOT)
        seconds = time.perf_counter() - start
        a, b = zarr.open_group(one, mode="r"), zarr.open_group(many, mode="r")
        same = all(np.array_equal(a[k][:], b[k][:]) for k in ("target", "predicted", "status"))
        ma, mb = (g["maps"][:].astype(np.float64) for g in (a, b))
        rel = float(np.abs(ma - mb).max() / max(np.abs(ma).max(), 1e-30))
        finished = bool(b["done"][:].all())
    ok = same and rel <= 1e-2 and finished
    return [{"run": f"torchrun x{procs} ({'nccl' if device.type == 'cuda' else 'gloo'})",
             "items": n, "same targets and predictions": "yes" if same else "no",
             "max rel. diff": rel, "seconds": seconds, "ok": "yes" if ok else "NO"}]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU against CPU at tiny sizes (tests the script without a GPU)")
    parser.add_argument("--calls", type=int, default=100, help="explanations per leak check")
    parser.add_argument("--out", default=str(ROOT / "build" / "gpu_check.md"))
    args = parser.parse_args(argv)
    if args.dry_run:
        devices = [torch.device("cpu")] * 2
        models, n, steps, batches, calls, scale = ["shapes_vgg"], 2, 2, [1], 3, 0.002
    elif torch.cuda.is_available():
        devices = [torch.device("cpu"), torch.device("cuda")]
        models, n, steps, batches, calls, scale = (["shapes_vgg", "efficientnet_lite0"], 4, 20,
                                                   [1, 32], args.calls, 1.0)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    else:
        print("gpu-check: no CUDA device on this machine; nothing was run.")
        return 0
    gpu = devices[1]
    title = torch.cuda.get_device_name(gpu) if gpu.type == "cuda" else "CPU (dry run)"
    parts = [f"# gpu-check on {title} (torch {torch.__version__})"]
    check = [r for m in models for r in parity(m, devices, n, steps)]
    parts += ["## (a) CPU against GPU", ev.markdown_table(
        check, ["model", "method", "max rel. diff", "pearson", "tolerance", "ok"],
        {"max rel. diff": ".2e", "pearson": ".4f"})]
    leak = [r for m in models for r in leaks(m, gpu, calls)]
    parts += ["## (b) Memory after repeated calls", ev.markdown_table(
        leak, ["model", "method", "calls", "growth MB", "tensors growth", "hooks", "ok"],
        {"growth MB": ".3f"})]
    speed = []
    for m in models:
        model = xu.load_model(m).to(gpu)
        speed += ev.speed_rows(model, m, batches, ev.method_settings(model, 5), steps=5)
    parts += ["## (c) Speed and peak memory (notebook 08's table)",
              ev.markdown_table(speed, ev.SPEED_COLUMNS, ev.SPEED_FORMATS)]
    full = full_steps(models[-1], gpu, 2, scale)
    parts += ["## (d) The optimisation methods at their papers' step counts",
              ev.markdown_table(full, ["model", "method", "images", "steps", "seconds"],
                                {"seconds": ".1f"})]
    runs = dataset_run(gpu, 8 if args.dry_run else 256)
    parts += ["## (e) The dataset runner under torchrun against one CPU process",
              ev.markdown_table(runs, list(runs[0]), {"max rel. diff": ".2e", "seconds": ".1f"})]
    report = "\n\n".join(parts) + "\n"
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    failed = [r for r in check + leak + runs if r["ok"] != "yes"]
    print(f"gpu-check: {len(check)} parity, {len(leak)} leak and {len(runs)} dataset checks, "
          f"{len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
