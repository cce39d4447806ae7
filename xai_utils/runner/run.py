"""`explain_dataset`: explain every item of a dataset into a zarr store, resumably, on one
process or several (torchrun: one chunk of items per batch, chunks dealt round-robin to the
ranks, each written by its rank into the same store)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

    def line(self) -> str:
        rate = self.explained_now / max(self.seconds, 1e-9)
        return (f"{self.done} done / {self.skipped} skipped / {self.failed} failed of "
                f"{self.items} items ({self.explained_now} processed now in {self.seconds:.1f} s,"
                f" {rate:.1f} images/s) -> {self.path}")


def weight_hash(model: nn.Module) -> str:
    """sha256 of the state_dict's names and bytes, first 16 hex digits."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def versions() -> dict:
    import numpy
    import zarr

    import xai_utils
    return {"xai_utils": xai_utils.__version__, "torch": torch.__version__,
            "zarr": zarr.__version__, "numpy": numpy.__version__}


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
                   params: dict, seed: int, chunk: int, dtype: str) -> dict[str, np.ndarray]:
    """Explain the good items of one chunk; bad ones keep NaN maps and get their reason."""
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
                    progress: bool = True, **params) -> RunSummary:
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
    """
    if isinstance(model, str):
        from xai_utils.data.models import load_model
        model = load_model(model)
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    if not (target in ("top", "label") or isinstance(target, int)):
        raise ValueError(f"target must be 'top', 'label' or a class index, got {target!r}")
    method_info(method)  # a clear error for unknown names before anything is written
    info, dev, started = model_info(model), model_device(model), time.perf_counter()
    source = read_source(data, info.class_names)
    rank, world, initialised = distributed_context(dev)
    try:
        run = {"method": method, "params": json.dumps(params, sort_keys=True, default=str),
               "model": info.name or type(model).__name__, "weights": weight_hash(model),
               "target": target, "dtype": dtype, "chunk": batch_size, "seed": seed,
               "data": source.spec, "items": len(source.items), "items_sha": items_hash(source),
               "input_size": info.input_size, "crop_pct": info.crop_pct}
        error = None
        if rank == 0:
            try:
                st.open_store(out, run, versions(), source, info.input_size, overwrite)
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
        mine = pending[rank::world]
        rows = [list(range(c * batch_size, min((c + 1) * batch_size, len(source.items))))
                for c in mine]
        loader = DataLoader(ItemDataset(source, info.input_size, info.crop_pct,
                                        info.interpolation),
                            batch_sampler=rows, collate_fn=collate_items,
                            num_workers=num_workers, pin_memory=dev.type == "cuda")
        labels = np.array([it.label for it in source.items], dtype=np.int64)
        total = sum(min(batch_size, len(source.items) - c * batch_size) for c in pending)
        steps = _reduce(len(mine), world, dev, dist.ReduceOp.MAX) if world > 1 else len(mine)
        bar = tqdm(total=total, unit="img", disable=not progress or rank != 0,
                   desc=f"{method} x{world}", dynamic_ncols=True)
        # files and shapes load one chunk ahead in a thread; a user's Dataset, whose code
        # may draw from torch's global generator or not be thread-safe, loads in turn
        ahead = num_workers == 0 and source.dataset is None
        batches = _one_ahead(iter(loader)) if ahead else iter(loader)
        writer, explained = st.ChunkWriter(out), 0
        try:  # the writer overlaps each chunk's store writes with the next chunk's work
            for _ in range(steps):
                batch = next(batches, None)
                count = 0
                if batch is not None:
                    chunk = int(batch["index"][0]) // batch_size
                    values = _explain_chunk(method, model, batch,
                                            labels[batch["index"]], target, params,
                                            seed, chunk, dtype)
                    writer.submit(chunk, values)
                    count = len(values["status"])
                explained += count
                bar.update(_reduce(count, world, dev) if world > 1 else count)
        finally:
            writer.close()
            if hasattr(batches, "close"):  # the loading thread of `_one_ahead`
                batches.close()
        bar.close()
        if world > 1:
            explained = _reduce(explained, world, dev)
            dist.barrier()
        summary = st.finish(group) if rank == 0 else None
        summary = _broadcast(summary, world)
        result = RunSummary(Path(out), summary["items"], summary["done"], summary["skipped"],
                            summary["failed"], time.perf_counter() - started, explained)
        if progress and rank == 0:
            print(result.line(), flush=True)
        return result
    finally:
        if initialised:
            dist.destroy_process_group()


def _one_ahead(iterator):
    """The items of `iterator`, each next one fetched in a thread while the caller works on
    the current one: without loader workers, decoding (which releases the interpreter lock)
    overlaps the explanations instead of running between them."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, None)
        while (item := future.result()) is not None:
            future = pool.submit(next, iterator, None)
            yield item


def _reduce(value: int, world: int, device: torch.device, op=None) -> int:
    comm = device if device.type == "cuda" else torch.device("cpu")
    t = torch.tensor([value], device=comm)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return int(t.item())
