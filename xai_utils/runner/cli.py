"""The command line: `python -m xai_utils explain|score ...` (also under torchrun)."""

from __future__ import annotations

import argparse
import json
import os
import sys

EPILOG = """\
inputs (--data): a folder of images (recursive); an ImageFolder layout (labels from the
sub-folder names); a .csv (header: file,target) or .json list of files with targets; a
folder of Pascal VOC XML annotations (Annotations/ + JPEGImages/, or .xml next to the
images); a COCO .json; shapes:N[:SEED] (the generated shapes task).

several processes (each explains its own chunks; same store, same result):
  torchrun --standalone --nproc_per_node=4 -m xai_utils explain --method gradcam \\
      --model efficientnet_lite0 --data DIR --out maps.zarr
several nodes (run on every node; NODE_RANK 0..N-1, HOST:PORT reachable from all):
  torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE_RANK \\
      --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=run1 \\
      -m xai_utils explain --method gradcam --model efficientnet_lite0 --data DIR \\
      --out /shared/maps.zarr
gloo is used on CPU, NCCL on GPUs (one GPU per process, cuda:LOCAL_RANK). Re-running the
same command continues an interrupted run; --overwrite replaces a different one.

examples:
  python -m xai_utils explain --method gradcam --model shapes_vgg --data shapes:2000 \\
      --out shapes.zarr --target label
  python -m xai_utils score shapes.zarr --metrics pointing,energy,deletion,insertion
"""


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _params(pairs: list[str]) -> dict:
    from xai_utils.runner.checks import ConfigError

    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--param expects NAME=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        params[key] = _value(value)
    return params


def _target(text: str):
    return text if text in ("top", "label") else int(text)


def _device(name: str | None) -> str:
    import torch

    from xai_utils.runner.checks import ConfigError

    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as err:
            raise ConfigError(f"--device {name!r}: {err}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine")
        return name
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xai_utils", epilog=EPILOG,
                                description="Explain and score whole datasets.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="explain every image of a dataset into a zarr store",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--method", required=True, help="a name from xu.methods(), e.g. gradcam")
    e.add_argument("--model", default="efficientnet_lite0",
                   help="a name for xu.load_model (default: efficientnet_lite0)")
    e.add_argument("--data", required=True, help="the dataset (see 'inputs' below)")
    e.add_argument("--out", required=True, help="the zarr store to write or continue")
    e.add_argument("--target", type=_target, default="top",
                   help="top (predicted class), label (the dataset's) or a class index")
    e.add_argument("--batch-size", type=int, default=32,
                   help="items per batch, also one zarr chunk (default 32)")
    e.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    e.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                   help="how maps are stored (default float16)")
    e.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, repeatable; VALUE is read as JSON when it parses")
    e.add_argument("--seed", type=int, default=0, help="base of the per-chunk seeds")
    e.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if any, else cpu")
    e.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    e.add_argument("--max-failures", type=int, default=8, metavar="N",
                   help="stop when the first N items all fail for the same reason (default 8)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bar; the summary is printed only when items failed")
    s = sub.add_parser("score", help="score the maps of a store",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("store", help="a store written by 'explain'")
    s.add_argument("--metrics", default="pointing,energy",
                   help="comma-separated: pointing, energy, deletion, insertion")
    s.add_argument("--out", default=None,
                   help="prefix of the .csv (per item) and .md (table); default: STORE_scores")
    s.add_argument("--tolerance", type=int, default=15,
                   help="pointing game tolerance in original image pixels (default 15)")
    s.add_argument("--steps", type=int, default=32, help="deletion/insertion steps (default 32)")
    s.add_argument("--batch-size", type=int, default=64,
                   help="model inputs per forward pass in deletion/insertion (default 64)")
    s.add_argument("--data", default=None, help="where the images are now, if they moved")
    s.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if any, else cpu")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks in the process instead of unmapping them at once.

    By default every tensor over 128 KiB is mapped fresh from the OS and returned on free, so
    each batch pays the page faults again (a long-running process raises glibc's thresholds
    by itself, a fresh command does not). Raising them (mmap threshold to glibc's own 32 MiB
    ceiling, trim threshold to 1 GiB) made `explain` on the shapes task about 30 % faster on a
    2-core CPU; resident memory then stays at the run's peak. Only the command line does this
    (it owns its process); elsewhere, and without glibc, nothing changes. Returns whether it
    applied.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) & bool(mallopt(m_trim_threshold, 1 << 30))


def main(argv: list[str] | None = None) -> int:
    """Run a command; exit status 0 (all explained), 1 (items failed, or the run stopped
    because they all failed) or 2 (misconfigured: nothing was written)."""
    from xai_utils.runner.checks import ConfigError, SystematicFailure

    args = parser().parse_args(argv)
    keep_freed_memory()
    try:
        if args.command == "explain":
            return _explain(args)
        return _score(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except SystematicFailure as err:
        print(str(err), file=sys.stderr, flush=True)
        print("  (chunks explained before the stop are kept; fix the cause and run the same "
              "command to continue, or raise --max-failures)", file=sys.stderr, flush=True)
        return 1


def _load(name: str, device: str):
    from xai_utils.models import load_model
    from xai_utils.runner.checks import ConfigError

    try:
        return load_model(name, device_=device)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise ConfigError(f"--model {name}: {err}") from None


def _explain(args) -> int:
    from xai_utils.runner.run import explain_dataset

    params = _params(args.param)
    model = _load(args.model, _device(args.device))
    summary = explain_dataset(args.method, model, args.data, args.out, target=args.target,
                              batch_size=args.batch_size, num_workers=args.workers,
                              dtype=args.dtype, overwrite=args.overwrite, seed=args.seed,
                              progress=not args.no_progress, max_failures=args.max_failures,
                              **params)
    if args.no_progress and summary.problems and int(os.environ.get("RANK", 0)) == 0:
        print(summary.report(), file=sys.stderr, flush=True)
    return 0 if summary.failed == 0 else 1


def _score(args) -> int:
    import zarr

    from xai_utils.runner.score import score_store

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    store = args.store.rstrip("/")
    out = args.out or store.removesuffix(".zarr") + "_scores"
    model = None
    if {"deletion", "insertion"} & set(metrics):
        model = _load(zarr.open_group(store, mode="r").attrs["run"]["model"],
                      _device(args.device))
    scores = score_store(store, metrics, model=model, data=args.data, tolerance=args.tolerance,
                         steps=args.steps, batch_size=args.batch_size, out=out,
                         progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        print(scores.markdown())
        print(f"wrote {out}.csv and {out}.md", file=sys.stderr)
    return 0
