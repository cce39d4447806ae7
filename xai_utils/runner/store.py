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

from xai_utils.runner.checks import ConfigError
from xai_utils.runner.datasets import Source

if TYPE_CHECKING:
    import zarr

PENDING, DONE, SKIPPED, FAILED = 0, 1, 2, 3


class RunMismatchError(ConfigError):
    """The store holds a different run (method, parameters, model or data)."""


class StoreBusyError(ConfigError):
    """Another live process is writing the store."""


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: store has {old.get(k)!r}, this run {new.get(k)!r}"
            for k in keys if old.get(k) != new.get(k)]


LOCK = ".lock"  # an empty file in the store; a live writer holds a POSIX lock on it


def lock_store(path: Path):
    """Lock the store at `path` for this process (an open file, kept open by the caller).

    POSIX record locks belong to one process: the kernel drops them when it dies (a kill
    included), and forked children (loader workers) do not inherit them. Raises
    `StoreBusyError` while another process holds the lock; file systems without locks
    are used unlocked."""
    import errno
    import fcntl

    path.mkdir(parents=True, exist_ok=True)
    handle = open(path / LOCK, "a+b")  # noqa: SIM115 - held for the run, closed by release
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            handle.close()
            raise StoreBusyError(f"{path} is being written by another running process; "
                                 "wait for it to finish or stop it first") from None
    return handle


def remove_partial_files(path: Path) -> int:
    """Delete the temporary files (`*.partial`) a killed writer left; return how many."""
    stale = list(path.rglob("*.partial"))
    for file in stale:
        file.unlink(missing_ok=True)
    return len(stale)


def open_store(path: str | Path, run: dict, versions: dict, source: Source, size: int,
               overwrite: bool = False):
    """Lock the store of `run` at `path` and open it to continue, or create it (rank 0 only).

    Returns the held lock (close it to release). An existing store of a different run raises
    `RunMismatchError` unless `overwrite`; one another process writes, `StoreBusyError`.
    A store killed while it was being created (no `run` attribute yet) is created anew.
    """
    import zarr

    path = Path(path)
    if path.exists() and not (path / "zarr.json").exists() and not (path / LOCK).exists():
        if any(path.iterdir()):
            raise ConfigError(f"{path} exists and is not a store of this package; "
                              "choose another output")
    lock = lock_store(path)
    try:
        remove_partial_files(path)
        if (path / "zarr.json").exists() and not overwrite:
            group = zarr.open_group(path, mode="r+")
            old = group.attrs.get("run")
            if old is not None:  # None: a run killed while the store was being created
                diff = _differences(old, run)
                if diff:
                    raise RunMismatchError(
                        f"{path} holds another run ({'; '.join(diff)}); pass "
                        "overwrite=True (--overwrite) to replace it, or choose another output")
                return lock
        for entry in path.iterdir():  # everything but the lock we hold
            if entry.name != LOCK:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        _create(path, run, versions, source, size)
        return lock
    except BaseException:
        lock.close()
        raise


def _create(path: Path, run: dict, versions: dict, source: Source, size: int) -> zarr.Group:
    import zarr
    from zarr.codecs import BloscCodec

    n, chunk = len(source.items), run["chunk"]
    group = zarr.open_group(path, mode="a")

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


class ChunkWriter:
    """Writes whole chunks of a store in a background thread, in submission order, through
    zarr's public API: every per-item array of a chunk first, then the chunk's `done` flag,
    so a flag is never set before its rows are on disk. At most `pending` chunks wait.

    A thread dies with its process: a killed run leaves no writer behind, and a chunk it had
    not flagged is recomputed whole on resume. (zarr >= 3.1.3 writes each file of a local
    store to a temporary name and renames it into place, so a file is never seen half
    written; `open_store` removes the temporaries a kill leaves.)
    """

    def __init__(self, group: zarr.Group, pending: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.arrays = {name: group[name] for name in (*ITEM_ARRAYS, "done")}
        self.size = self.arrays["maps"].chunks[0]
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self.futures: list = []
        self.pending = pending

    def _write(self, chunk: int, values: dict[str, np.ndarray]) -> None:
        rows = slice(chunk * self.size, chunk * self.size + len(values["status"]))
        for name in ITEM_ARRAYS:
            self.arrays[name][rows] = values[name]
        self.arrays["done"][chunk] = 1

    def submit(self, chunk: int, values: dict[str, np.ndarray]) -> None:
        """Queue one chunk's rows of every per-item array; raises a failed write's error."""
        self.futures.append(self.pool.submit(self._write, chunk, values))
        while len(self.futures) > self.pending:
            self.futures.pop(0).result()

    def close(self) -> None:
        """Wait for every queued chunk (all written when this returns)."""
        try:
            for future in self.futures:
                future.result()
        finally:
            self.pool.shutdown(wait=True)


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


def problems(group: zarr.Group) -> list[tuple[str, int, str]]:
    """The store's skipped and failed items grouped by reason, the item's own file name in a
    reason read as `<file>`: (reason, count, first file), most frequent first."""
    errors = group["errors"]
    groups: dict[str, list] = {}
    for reason, file in zip(errors["reason"][:], errors["file"][:], strict=True):
        reason, file = str(reason), str(file)
        name = Path(file).name
        entry = groups.setdefault(reason.replace(name, "<file>") if name else reason, [0, file])
        entry[0] += 1
    return sorted(((r, c, f) for r, (c, f) in groups.items()), key=lambda g: -g[1])


def run_identity(group: zarr.Group) -> dict:
    """The `run` attributes of a store, with its parameters decoded."""
    run = dict(group.attrs["run"])
    run["params"] = json.loads(run["params"])
    return run
