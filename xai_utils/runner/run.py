"""`explain_dataset`: explain every item of a dataset into a zarr store, resumably, on one
process or several (torchrun: one chunk of items per batch, chunks dealt round-robin to the
ranks, each written by its rank into the same store)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from xai_utils.core.inputs import input_spec, model_info
from xai_utils.core.model_state import model_device
from xai_utils.core.registry import explain, method_info
from xai_utils.runner import store as st
from xai_utils.runner.checks import ConfigError, FailureGuard, SystematicFailure, check_run
from xai_utils.runner.datasets import ItemDataset, Source, collate_items, read_source


@dataclass
class RunSummary:
    """What a run left in its store (counts over the whole store, not just this call)."""

    path: Path
    items: int
    done: int
    skipped: int
    failed: int
    seconds: float
    explained_now: int
    problems: list[tuple[str, int, str]] = field(default_factory=list)

    def line(self) -> str:
        rate = self.explained_now / max(self.seconds, 1e-9)
        return (f"{self.done} done / {self.skipped} skipped / {self.failed} failed of "
                f"{self.items} items ({self.explained_now} processed now in {self.seconds:.1f} s,"
                f" {rate:.1f} images/s) -> {self.path}")

    def report(self, most: int = 10) -> str:
        """The summary line, then the skipped and failed items grouped by reason: count and
        first file of each (the whole list is the store's `errors` table)."""
        lines = [self.line()]
        for reason, count, first in self.problems[:most]:
            lines.append(f"  {count} x {reason} (first: {first})")
        if len(self.problems) > most:
            rest = sum(c for _, c, _ in self.problems[most:])
            lines.append(f"  ... {rest} more items with {len(self.problems) - most} other "
                         "reasons (see the store's errors table)")
        return "\n".join(lines)


def weight_hash(model: nn.Module) -> str:
    """sha256 of the state_dict's names and bytes, first 16 hex digits."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"
    return {"xai_utils": of("xai_utils"), "torch": torch.__version__, "zarr": of("zarr"),
            "numpy": np.__version__}


def items_hash(source: Source) -> str:
    h = hashlib.sha256()
    for it in source.items:
        h.update(json.dumps([it.file, it.label, it.boxes, it.difficult]).encode())
    return h.hexdigest()[:16]


def distributed_context(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call initialised the process group). Under torchrun
    (WORLD_SIZE set) the group is initialised here: NCCL on CUDA, gloo otherwise."""
    if not dist.is_available() or "WORLD_SIZE" not in os.environ:
        return 0, 1, False
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return dist.get_rank(), dist.get_world_size(), started


def _broadcast(value, world: int):
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _explain_chunk(method: str, model: nn.Module, batch: dict, labels: np.ndarray, target,
                   params: dict, seed: int, chunk: int, dtype: str,
                   guard: FailureGuard) -> dict[str, np.ndarray]:
    """Explain the good items of one chunk; bad ones keep NaN maps and get their reason.
    The method's failures go to `guard`, which raises `SystematicFailure` to stop the run."""
    reasons = list(batch["reason"])
    n, size = len(reasons), batch["pixels"].shape[1]
    out = {"maps": np.full((n, size, size), np.nan, dtype=dtype),
           "target": np.full(n, -1, np.int64), "predicted": np.full(n, -1, np.int64),
           "probability": np.full(n, np.nan, np.float32), "status": np.full(n, st.DONE, np.int8),
           "size": batch["size"]}
    if target == "label":
        reasons = [r or ("no label for target='label'" if lab < 0 else "")
                   for r, lab in zip(reasons, labels, strict=True)]
    good = [i for i, r in enumerate(reasons) if not r]
    if good:
        dev = model_device(model)
        # the arithmetic and memory layout of xu.preprocess: the same maps bit for bit
        pixels = batch["pixels"] if len(good) == n else batch["pixels"][good]
        pixels = pixels.permute(0, 3, 1, 2).float() / 255
        x = input_spec(model).normalize(pixels).to(dev)
        with torch.no_grad():
            probs = model(x).softmax(dim=1)
        probability, predicted = probs.max(dim=1)
        if target == "top":
            tgt = predicted
        elif target == "label":
            tgt = torch.as_tensor(labels[good], device=dev)
        else:
            tgt = torch.full_like(predicted, int(target))
        chunk_seed = seed * 1_000_003 + chunk
        kwargs = dict(params)
        if method_info(method).stochastic and "seed" not in kwargs:
            kwargs["seed"] = chunk_seed
        torch.manual_seed(chunk_seed)
        ok = np.ones(len(good), dtype=bool)
        try:
            maps = explain(method, model, x, tgt, **kwargs).saliency.detach()
            guard.record([""])
        except Exception:  # isolate the items the method fails on
            maps = torch.full(x.shape[:1] + x.shape[2:], float("nan"), device=dev)
            for j, i in enumerate(good):
                torch.manual_seed(chunk_seed)
                try:
                    maps[j] = explain(method, model, x[j:j + 1], tgt[j:j + 1],
                                      **kwargs).saliency.detach()[0]
                except Exception as err:  # noqa: BLE001 - recorded as the item's reason
                    reasons[i] = f"method failed: {type(err).__name__}: {err}"
                    ok[j] = False
                guard.record([reasons[i]])
        rows = np.asarray(good)[ok]
        maps = maps.to(getattr(torch, dtype)).cpu()
        if len(rows) == n:  # every item explained: the maps are the chunk
            out["maps"] = maps.numpy()
        else:
            out["maps"][rows] = maps[torch.from_numpy(ok)].numpy()
        out["target"][rows] = tgt.cpu().numpy()[ok]
        out["predicted"][rows] = predicted.cpu().numpy()[ok]
        out["probability"][rows] = probability.cpu().numpy()[ok]
        out["status"][np.asarray(good)[~ok]] = st.FAILED
    for i, r in enumerate(reasons):
        if r and out["status"][i] != st.FAILED:
            out["status"][i] = st.SKIPPED
    out["reason"] = np.array(reasons, dtype=str)
    return out


def explain_dataset(method: str, model: nn.Module | str, data, out: str | Path, *,
                    target: str | int = "top", batch_size: int = 32, num_workers: int = 0,
                    dtype: str = "float16", overwrite: bool = False, seed: int = 0,
                    progress: bool = True, max_failures: int = 8, **params) -> RunSummary:
    """Explain every item of `data` with `method` into the zarr store `out`.

    `data`: a folder, an ImageFolder layout, a CSV/JSON list, VOC annotations, COCO JSON,
    `shapes:N` or a Dataset (see `xai_utils.runner.datasets`). `target`: "top" (the
    predicted class), "label" (the dataset's label) or a class index. Items are explained in
    chunks of `batch_size` (one zarr chunk each) fed by a DataLoader with `num_workers`
    workers (0: files load one chunk ahead in a thread); maps are stored
    as `dtype` (float16 or float32). Calling again with the same arguments continues an
    interrupted run; a different run in `out` raises `RunMismatchError` unless
    `overwrite=True`. Under torchrun the chunks are shared among
    the processes. Bad items are skipped into the store's `errors` table.

    A misconfigured run raises `ConfigError` before anything is written (see
    `xai_utils.runner.checks`); a run whose first `max_failures` items all fail for one
    reason raises `SystematicFailure` and flags none of them done. Everything is written
    when this returns; while it runs, the store is locked against other processes.
    """
    if isinstance(model, str):
        from xai_utils.models import load_model
        model = load_model(model)
    check_run(method, model, params, target, dtype, batch_size, num_workers, max_failures)
    info, dev, started = model_info(model), model_device(model), time.perf_counter()
    try:
        source = read_source(data, info.class_names)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    rank, world, initialised = distributed_context(dev)
    lock = None
    try:
        run = {"method": method, "params": json.dumps(params, sort_keys=True, default=str),
               "model": info.name or type(model).__name__, "weights": weight_hash(model),
               "target": target, "dtype": dtype, "chunk": batch_size, "seed": seed,
               "data": source.spec, "items": len(source.items), "items_sha": items_hash(source),
               "input_size": info.input_size, "crop_pct": info.crop_pct}
        error = None
        if rank == 0:
            try:
                lock = st.open_store(out, run, versions(), source, info.input_size, overwrite)
            except Exception as err:  # noqa: BLE001 - raised on every rank below
                error = err
        error = _broadcast(error, world)
        if error is not None:
            raise error
        import zarr
        group = zarr.open_group(out, mode="r+")
        pending = st.pending_chunks(group)
        if world > 1:
            dist.barrier()  # everyone has read the flags before anyone writes
        explained = _explain_chunks(method, model, source, group, pending, rank, world,
                                    target=target, batch_size=batch_size,
                                    num_workers=num_workers, dtype=dtype, seed=seed,
                                    progress=progress, guard=FailureGuard(max_failures),
                                    params=params)
        if world > 1:
            dist.barrier()
        summary = st.finish(group) if rank == 0 else None
        summary = _broadcast(summary, world)
        result = RunSummary(Path(out), summary["items"], summary["done"], summary["skipped"],
                            summary["failed"], time.perf_counter() - started, explained,
                            st.problems(group) if rank == 0 else [])
        if progress and rank == 0:
            print(result.report(), flush=True)
        return result
    finally:
        if lock is not None:
            lock.close()
        if initialised:
            dist.destroy_process_group()


def _explain_chunks(method: str, model: nn.Module, source: Source, group, pending: list[int],
                    rank: int, world: int, *, target, batch_size: int, num_workers: int,
                    dtype: str, seed: int, progress: bool, guard: FailureGuard,
                    params: dict) -> int:
    """Explain this rank's share of the `pending` chunks into `group`; return how many items
    all ranks processed. Chunks wait in `held` until `guard` has decided that the run is not
    failing throughout, so a stopped run flags none of them done."""
    info, dev = model_info(model), model_device(model)
    mine = pending[rank::world]
    n = len(source.items)
    rows = [list(range(c * batch_size, min((c + 1) * batch_size, n))) for c in mine]
    loader = DataLoader(ItemDataset(source, info.input_size, info.crop_pct, info.interpolation),
                        batch_sampler=rows, collate_fn=collate_items, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", worker_init_fn=die_with_parent)
    labels = np.array([it.label for it in source.items], dtype=np.int64)
    total = sum(min(batch_size, n - c * batch_size) for c in pending)
    steps = _reduce([len(mine)], world, dev, dist.ReduceOp.MAX)[0] if world > 1 else len(mine)
    bar = tqdm(total=total, unit="img", disable=not progress or rank != 0,
               desc=f"{method} x{world}", dynamic_ncols=True)
    # files and shapes load one chunk ahead in a thread; a user's Dataset, whose code
    # may draw from torch's global generator or not be thread-safe, loads in turn
    ahead = num_workers == 0 and source.dataset is None
    batches = _one_ahead(iter(loader)) if ahead else iter(loader)
    writer, explained, held, stop = st.ChunkWriter(group), 0, [], None
    try:  # the writer overlaps each chunk's store writes with the next chunk's work
        for _ in range(steps):
            batch = next(batches, None) if stop is None else None
            count = 0
            if batch is not None:
                chunk = int(batch["index"][0]) // batch_size
                try:
                    values = _explain_chunk(method, model, batch, labels[batch["index"]],
                                            target, params, seed, chunk, dtype, guard)
                    held.append((chunk, values))
                    count = len(values["status"])
                except SystematicFailure as err:
                    stop, held = err, []
            if guard.decided and stop is None:
                for item in held:
                    writer.submit(*item)
                held = []
            if world > 1:
                count, stopped = _reduce([count, stop is not None], world, dev)
                if stopped and stop is None:
                    stop, held = _first_reason(None, world), []
                elif stopped:
                    _first_reason(stop, world)
            explained += count
            bar.update(count)
            if stop is not None:
                break
        for item in held:  # the run ended before the guard decided
            writer.submit(*item)
    finally:
        writer.close()
        if hasattr(batches, "close"):  # the loading thread of `_one_ahead`
            batches.close()
        bar.close()
    if stop is not None:
        raise stop
    return explained


def _first_reason(stop: SystematicFailure | None, world: int) -> SystematicFailure:
    """The stop of the first rank that stopped, known to every rank."""
    stops = [None] * world
    dist.all_gather_object(stops, None if stop is None else (stop.count, stop.reason))
    count, reason = next(s for s in stops if s is not None)
    return SystematicFailure(count, reason)


def die_with_parent(_worker: int = 0) -> None:
    """Ask Linux to kill this process when its parent dies (a DataLoader worker of a killed
    run would otherwise live on for seconds); elsewhere nothing changes."""
    import ctypes
    import signal
    import sys

    if sys.platform != "linux":
        return
    try:
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request
        os._exit(1)


def _one_ahead(iterator):
    """The items of `iterator`, each next one fetched in a thread while the caller works on
    the current one: without loader workers, decoding (which releases the interpreter lock)
    overlaps the explanations instead of running between them."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, None)
        while (item := future.result()) is not None:
            future = pool.submit(next, iterator, None)
            yield item


def _reduce(values: list[int], world: int, device: torch.device, op=None) -> list[int]:
    comm = device if device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([int(v) for v in values], device=comm)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]
