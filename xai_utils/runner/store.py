"""The on-disk store of a dataset run: one zarr v3 group that plain zarr and numpy can read.

Per item (one row each, chunked by the run's batch: one zarr chunk = one batch, in order):
`maps` (N x S x S, float16 or float32, NaN where not explained), `target`, `predicted`
(-1 where not explained), `probability` (softmax of the predicted class), `status`
(0 pending, 1 explained, 2 skipped: bad data, 3 failed: the method raised), `reason`,
`size` (original height and width), and, written once when the run starts, `file`, `label`,
`difficult` and `skip_pointing` (pointing-game subsets) and `boxes` (M x 5: item, x0, y0, x1,
y1 in original pixels). `done` holds one flag per chunk, set after the chunk's arrays are
written: a chunk not flagged is recomputed whole. `errors/{index,file,reason}` lists skipped
and failed items. `attrs["run"]` identifies the run (method, parameters, model and weight
hash, data); `attrs["versions"]` the packages; `attrs["summary"]` the counts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xai_utils.runner.datasets import Source

if TYPE_CHECKING:
    import zarr

PENDING, DONE, SKIPPED, FAILED = 0, 1, 2, 3


class RunMismatchError(ValueError):
    """The store holds a different run (method, parameters, model or data)."""


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: store has {old.get(k)!r}, this run {new.get(k)!r}"
            for k in keys if old.get(k) != new.get(k)]


def open_store(path: str | Path, run: dict, versions: dict, source: Source, size: int,
               overwrite: bool = False) -> zarr.Group:
    """Open the store of `run` at `path` to continue it, or create it (rank 0 only).

    An existing store of a different run raises `RunMismatchError` unless `overwrite`.
    """
    import zarr

    path = Path(path)
    if path.exists() and not overwrite:
        group = zarr.open_group(path, mode="r+")
        old = group.attrs.get("run")
        if old is not None:  # None: a run killed while the store was being created
            diff = _differences(old, run)
            if diff:
                raise RunMismatchError(
                    f"{path} holds another run ({'; '.join(diff)}); pass overwrite=True "
                    "(--overwrite) to replace it, or choose another output")
            return group
    if path.exists():
        shutil.rmtree(path)
    return _create(path, run, versions, source, size)


def _create(path: Path, run: dict, versions: dict, source: Source, size: int) -> zarr.Group:
    import zarr
    from zarr.codecs import BloscCodec

    n, chunk = len(source.items), run["chunk"]
    group = zarr.open_group(path, mode="w")

    def array(name, shape, dtype, fill, **kwargs):
        return group.create_array(name, shape=shape, dtype=dtype, fill_value=fill,
                                  chunks=(chunk,) + tuple(shape[1:]), **kwargs)

    # Blosc lz4 with byte shuffling: about twice as fast as zarr's default zstd, and smaller
    array("maps", (n, size, size), run["dtype"], np.nan,
          compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"))
    array("target", (n,), "int64", -1)
    array("predicted", (n,), "int64", -1)
    array("probability", (n,), "float32", np.nan)
    array("status", (n,), "int8", PENDING)
    array("reason", (n,), str, "")
    array("size", (n, 2), "int32", 0)
    def once(name, values, dtype, fill):  # written here only: one chunk, not one per batch
        group.create_array(name, shape=(n,), dtype=dtype, fill_value=fill,
                           chunks=(max(1, n),))[:] = values

    once("file", np.array([it.file for it in source.items], dtype=str), str, "")
    once("label", np.array([it.label for it in source.items]), "int64", -1)
    once("difficult", np.array([it.difficult for it in source.items]), "bool", False)
    once("skip_pointing", np.array([it.skip_pointing for it in source.items]), "bool", False)
    boxes = np.array([(i, *b) for i, it in enumerate(source.items) for b in it.boxes],
                     dtype=np.float64).reshape(-1, 5)
    group.create_array("boxes", shape=boxes.shape, dtype="float64", fill_value=0.0,
                       chunks=(max(1, len(boxes)), 5))[:] = boxes
    group.create_array("done", shape=(num_chunks(n, chunk),), dtype="uint8", fill_value=0,
                       chunks=(1,))
    group.attrs.update({"versions": versions, "run": run})  # "run" last: the store is ready
    return group


def num_chunks(n: int, chunk: int) -> int:
    return (n + chunk - 1) // chunk


def pending_chunks(group: zarr.Group) -> list[int]:
    """Chunks not yet flagged done, in order."""
    return [int(c) for c in np.flatnonzero(group["done"][:] == 0)]


ITEM_ARRAYS = ("maps", "target", "predicted", "probability", "status", "reason", "size")
_OPEN: dict[str, dict] = {}  # the arrays of each store this process writes to


def _arrays(path: str) -> dict:
    """The per-item arrays and the done flags of the store at `path`, opened once."""
    import zarr

    if path not in _OPEN:
        group = zarr.open_group(path, mode="r+")
        _OPEN[path] = {name: group[name] for name in (*ITEM_ARRAYS, "done")}
    return _OPEN[path]


def _prepare(path: str) -> None:
    _arrays(path)


def _write_rows(path: str, chunk: int, values: dict[str, np.ndarray]) -> None:
    """Write one chunk's rows of every per-item array concurrently, then flag it done."""
    import asyncio

    from zarr.core.sync import sync

    arrays = _arrays(path)
    size = arrays["maps"].chunks[0]
    rows = slice(chunk * size, chunk * size + len(values["status"]))

    async def write_all() -> None:
        await asyncio.gather(*(arrays[name]._async_array.setitem(rows, value)
                               for name, value in values.items()))
    sync(write_all())
    arrays["done"][chunk] = 1


class ChunkWriter:
    """Writes whole chunks in submission order in a forked writer process (a thread where
    fork is unavailable), so that zarr's encoding, which holds the interpreter lock, runs
    beside the explanations instead of between them. At most `pending` chunks wait."""

    def __init__(self, path: str | Path, pending: int = 4, process: bool = True) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

        self.path = str(path)
        _OPEN.pop(self.path, None)  # a store written before may have been replaced since
        if process and "fork" in multiprocessing.get_all_start_methods():
            self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
        else:
            self.pool = ThreadPoolExecutor(max_workers=1)
        # open the arrays now: the writer process is forked here, before the caller starts
        # any thread of its own (a fork copies no threads, only the locks they may hold)
        self.futures: list = [self.pool.submit(_prepare, self.path)]
        self.pending = pending

    def submit(self, chunk: int, values: dict[str, np.ndarray]) -> None:
        """Queue one chunk's rows of every per-item array; raises a failed write's error."""
        self.futures.append(self.pool.submit(_write_rows, self.path, chunk, values))
        while len(self.futures) > self.pending:
            self.futures.pop(0).result()

    def close(self) -> None:
        """Wait for every queued chunk."""
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown()


def finish(group: zarr.Group) -> dict:
    """Write the error table and the summary of a complete store; return the summary."""
    status = group["status"][:]
    bad = np.flatnonzero((status == SKIPPED) | (status == FAILED))
    files = group["file"].get_coordinate_selection(bad) if len(bad) else np.array([], str)
    reason = group["reason"].get_coordinate_selection(bad) if len(bad) else np.array([], str)
    errors = group.require_group("errors")
    for name, value, dtype in (("index", bad.astype(np.int64), "int64"),
                               ("file", np.array([str(f) for f in files], dtype=str), str),
                               ("reason", np.array([str(r) for r in reason], dtype=str), str)):
        if name in errors:
            del errors[name]
        errors.create_array(name, shape=(len(bad),), dtype=dtype,
                            chunks=(max(1, len(bad)),), fill_value=0 if dtype == "int64" else "")
        if len(bad):
            errors[name][:] = value
    summary = {"items": int(len(status)), "done": int((status == DONE).sum()),
               "skipped": int((status == SKIPPED).sum()),
               "failed": int((status == FAILED).sum()),
               "pending": int((status == PENDING).sum())}
    group.attrs["summary"] = summary
    return summary


def run_identity(group: zarr.Group) -> dict:
    """The `run` attributes of a store, with its parameters decoded."""
    run = dict(group.attrs["run"])
    run["params"] = json.loads(run["params"])
    return run
