"""The dataset runner against plain loops, one process against two, and its memory.

    python benchmarks/bench_dataset.py [--n 2000] [--batch 32] [--method gradcam]

Shapes images are written once as PNG files with VOC boxes; then, with one thread each:
(a) a plain loop of load_image / preprocess / xu.explain over the same batches of files,
keeping nothing; (b) the same loop saving one .npy per image (float16); (c)
`xu.explain_dataset` into a zarr store (DataLoader in the main process, the next chunk
loading in a thread; the same with that thread off, loading between the explanations; then
two loader workers); (d) the command line in one process and (e) under `torchrun --standalone
--nproc_per_node=2` (times from the run's own summary line: interpreter start and model
loading left out). Resident
memory of (c) is sampled every 20 ms: the peak after the first chunk over the value then.
Prints the ratios; timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

import xai_utils as xu
from xai_utils.runner import run as run_module
from xai_utils.runner.datasets import read_source
from xai_utils.runner.samples import write_shapes_voc

one_ahead = run_module._one_ahead


def plain_loop(model, files: list[Path], batch: int, method: str, npy: Path | None) -> float:
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = files[i:i + batch]
        x = xu.preprocess([xu.load_image(f) for f in chunk], model)
        maps = xu.explain(method, model, x).saliency
        if npy is not None:
            for f, m in zip(chunk, maps, strict=True):
                np.save(npy / f"{f.stem}.npy", m.numpy().astype(np.float16))
    return time.perf_counter() - start


def runner(model, data: Path, out: Path, batch: int, method: str, workers: int,
           ahead: bool = True) -> tuple[float, float]:
    proc, samples, stop = psutil.Process(), [], threading.Event()
    run_module._one_ahead = one_ahead if ahead else iter  # the thread off: load in turn

    def sample():
        while not stop.is_set():
            done = out / "done" / "c"
            samples.append((proc.memory_info().rss, len(list(done.iterdir()))
                            if done.exists() else 0))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    xu.explain_dataset(method, model, data, out, batch_size=batch, num_workers=workers,
                       progress=False)
    seconds = time.perf_counter() - start
    stop.set()
    thread.join()
    after_first = [rss for rss, done in samples if done >= 1]
    return seconds, max(after_first) / after_first[0] if after_first else float("nan")


def cli_seconds(data: Path, out: Path, batch: int, method: str, procs: int) -> float:
    args = ["-m", "xai_utils", "explain", "--method", method, "--model", "shapes_vgg",
            "--data", str(data), "--out", str(out), "--batch-size", str(batch),
            "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XAI_DEVICE": "cpu"}
    if procs == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone",
               f"--nproc_per_node={procs}", *args[1:]]
    result = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    match = re.search(r"processed now in ([0-9.]+) s", result.stdout)
    if match is None:
        raise RuntimeError(f"no summary line in the output:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--repeats", type=int, default=2, help="the fastest of each is kept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = xu.load_model("shapes_vgg", device_="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_shapes_voc(tmp / "voc", args.n)
        files = [data / it.file for it in read_source(data, model.xai.class_names).items]
        (tmp / "npy").mkdir()
        plain_loop(model, files[:args.batch], args.batch, args.method, None)  # warm-up
        loops, npys, runs, inline, workers, ones, twos = [], [], [], [], [], [], []
        for r in range(args.repeats):  # interleaved: a shared machine's load hits all alike
            loops.append(plain_loop(model, files, args.batch, args.method, None))
            npys.append(plain_loop(model, files, args.batch, args.method, tmp / "npy"))
            runs.append(runner(model, data, tmp / f"run{r}.zarr", args.batch, args.method, 0))
            inline.append(runner(model, data, tmp / f"in{r}.zarr", args.batch, args.method, 0,
                                 ahead=False))
            workers.append(runner(model, data, tmp / f"w{r}.zarr", args.batch, args.method, 2))
            ones.append(cli_seconds(data, tmp / f"one{r}.zarr", args.batch, args.method, 1))
            twos.append(cli_seconds(data, tmp / f"two{r}.zarr", args.batch, args.method, 2))
        t_loop, t_npy, t_one, t_two = min(loops), min(npys), min(ones), min(twos)
        (t_run, memory), (t_inline, _), (t_workers, _) = min(runs), min(inline), min(workers)
    n = len(files)
    print(f"{args.method}, shapes_vgg, {n} images of 112 px, batches of {args.batch}, "
          f"1 thread per process, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    print("| run | seconds | images/s | ratio |")
    print("|---|---|---|---|")
    for name, t, ref in (("plain loop of xu.explain", t_loop, t_loop),
                         ("loop + one .npy per image", t_npy, t_loop),
                         ("explain_dataset (zarr)", t_run, t_loop),
                         ("explain_dataset, no loading thread", t_inline, t_loop),
                         ("explain_dataset, 2 loader workers", t_workers, t_loop),
                         ("CLI, 1 process", t_one, t_one),
                         ("torchrun, 2 processes", t_two, t_one)):
        print(f"| {name} | {t:.2f} | {n / t:.1f} | {t / ref:.3f} |")
    print(f"runner overhead vs plain loop: {100 * (t_run / t_loop - 1):+.1f} %")
    print(f"runner without its loading thread vs plain loop: "
          f"{100 * (t_inline / t_loop - 1):+.1f} %")
    print(f"runner with 2 loader workers vs plain loop: {100 * (t_workers / t_loop - 1):+.1f} %")
    print(f"runner vs .npy per image: {t_npy / t_run:.2f}x faster")
    print(f"two processes vs one: {t_one / t_two:.2f}x")
    print(f"resident memory, peak after the first chunk / after the first chunk: {memory:.3f}")


if __name__ == "__main__":
    main()
