"""A dataset store that no kill can corrupt: SIGKILL anywhere in a run (start-up, store
creation, a chunk half written, a flag half written, the closing summary), one rank of a
torchrun job killed, then the same command: the store equals the uninterrupted one byte for
byte, nothing of a killed run is left running, and the store is complete the instant the
command returns. `KILL_SEED=N` replays one draw of kill points."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import zarr

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "XAI_DEVICE": "cpu"}
ITEMS, BATCH = 320, 8
CHUNKS = ITEMS // BATCH


def _cli(out: Path, *extra: str) -> list[str]:
    return ["-m", "xai_utils", "explain", "--method", "gradcam", "--model", "shapes_vgg",
            "--data", f"shapes:{ITEMS}", "--out", str(out), "--batch-size", str(BATCH),
            "--no-progress", *extra]


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path: bit-for-bit comparison."""
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    subprocess.run([sys.executable, *_cli(out, "--workers", "0")], check=True, env=ENV,
                   cwd=REPO)
    return out


def _flags(out: Path) -> int:
    try:
        return len(os.listdir(out / "done" / "c"))
    except FileNotFoundError:
        return 0


def _partial(folder: Path) -> bool:
    try:
        return any(name.endswith(".partial") for name in os.listdir(folder))
    except FileNotFoundError:
        return False


def _trigger(kind: str, out: Path, start: float, arg: float):
    """A predicate that says when to kill."""
    return {
        "time": lambda: time.monotonic() - start >= arg,  # start-up: imports, model
        "store": lambda: out.exists(),  # the lock taken, the store being created
        "flag_partial": lambda: _partial(out / "done" / "c"),  # a flag half written
        "flags": lambda: _flags(out) >= arg,  # between chunks
        "closing": lambda: (out / "errors").exists(),  # the error table and summary
    }[kind]


def _tree(pid: int) -> list[psutil.Process]:
    try:
        return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


# runs the command line, SIGKILLing itself at the KILL_AT-th file zarr writes: with
# KILL_WHEN=before, the file complete under its temporary name, not yet renamed into place;
# with after, just renamed (a chunk's other arrays or its flag not yet written)
SELF_KILL = """
import os, pathlib, runpy, signal, sys
at, when, count, rename = int(os.environ["KILL_AT"]), os.environ["KILL_WHEN"], [0], \\
    pathlib.Path.replace
def replace(self, target):
    count[0] += 1
    if count[0] == at and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = rename(self, target)
    if count[0] == at and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result
pathlib.Path.replace = replace
sys.argv[0] = "xai_utils"
runpy.run_module("xai_utils", run_name="__main__", alter_sys=True)
"""


def _run_and_kill(cmd: list[str], when=None, victim=None, env=None, limit: float = 300.0):
    """Start `cmd`; SIGKILL it (or the process `victim` picks from its tree) once `when()`
    holds, or let it kill itself (`SELF_KILL`). Return whether it died by a kill and the
    processes of the run still alive 5 s after it ended."""
    proc = subprocess.Popen(cmd, env={**ENV, **(env or {})}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, tree, looked = time.monotonic() + limit, [], 0.0
    while proc.poll() is None and time.monotonic() < deadline:
        if time.monotonic() - looked > 0.02:  # the loader workers, as they start
            tree, looked = _tree(proc.pid) or tree, time.monotonic()
        if when is not None and when():
            tree = _tree(proc.pid) or tree
            target = victim(tree) if victim else proc
            if target is not None:
                target.send_signal(signal.SIGKILL)
                break
        time.sleep(0.001)
    errors = proc.communicate(timeout=limit)[1]
    if victim is None:  # killed, or the run ended by itself: nothing else is expected
        assert proc.returncode in (-signal.SIGKILL, 0), errors[-3000:]
    killed = proc.returncode != 0
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    end = time.monotonic() + 5
    while alive and time.monotonic() < end:
        time.sleep(0.05)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return killed, alive


def _check_complete(out: Path, reference: Path) -> None:
    """Read the store the instant its command returned: whole, and equal to the reference."""
    g = zarr.open_group(out, mode="r")
    assert g["done"][:].all() and (g["status"][:] == 1).all()
    assert all(str(f) for f in g["file"][:])
    np.testing.assert_array_equal(g["maps"][:], zarr.open_group(reference, mode="r")["maps"][:])
    assert store_files(out) == store_files(reference)


@pytest.mark.slow
def test_kill_anywhere_then_resume_equals_uninterrupted(reference, tmp_path):
    seed = int(os.environ.get("KILL_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    out = tmp_path / "killed.zarr"
    writes = len(store_files(reference))  # about as many files as a whole run writes
    # one chain of runs, each killed at its point and continued by the next; half of them
    # load with two DataLoader workers (whose processes must die too)
    points = [("time", rng.uniform(0.2, 1.5)), ("store", 0), ("write", "before"),
              ("flags", rng.randint(1, 4)), ("write", "after"), ("write", "before"),
              ("flag_partial", 0), ("write", "after"), ("flags", rng.randint(1, 4)),
              ("write", "before"), ("write", "after"), ("closing", 0)]
    log = []
    for i, (kind, arg) in enumerate(points):
        cmd = [sys.executable, *_cli(out, "--workers", "2" if i % 2 else "0")]
        if kind == "write":  # the k-th file, drawn from the first half of those left
            left = max(2, writes * (CHUNKS - _flags(out)) // CHUNKS)
            env = {"KILL_AT": str(rng.randint(1, left // 2)), "KILL_WHEN": arg}
            killed, alive = _run_and_kill([sys.executable, "-c", SELF_KILL, *cmd[3:]],
                                          env=env)
            arg = f"{arg} write {env['KILL_AT']} of ~{left}"
        else:
            arg = arg + _flags(out) if kind == "flags" else arg
            killed, alive = _run_and_kill(cmd, _trigger(kind, out, time.monotonic(), arg))
        log.append((kind, arg, killed, _flags(out)))
        assert not alive, f"seed {seed}: {alive} outlived the run killed at {log[-1]}"
    assert sum(k for _, _, k, _ in log) >= 9, f"seed {seed}: too few kills landed: {log}"
    subprocess.run([sys.executable, *_cli(out, "--workers", "2")], check=True, env=ENV,
                   cwd=REPO)
    _check_complete(out, reference)
    print(f"seed {seed}: {log}")


def _rank(tree: list[psutil.Process], rank: str):
    for p in tree:
        try:
            if "xai_utils" in p.cmdline() and p.environ().get("RANK") == rank:
                return p
        except psutil.Error:
            continue
    return None


@pytest.mark.slow
def test_killed_torchrun_rank_leaves_nothing_and_resumes(reference, tmp_path):
    """One rank of two SIGKILLed mid-run: torchrun ends the job, no process of it is left,
    and the same command finishes a store equal to the one-process reference."""
    out = tmp_path / "ranks.zarr"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", *_cli(out, "--workers", "2")[1:]]
    killed, alive = _run_and_kill(cmd, lambda: _flags(out) >= 6,
                                  victim=lambda tree: _rank(tree, "1"))
    assert killed and not alive, alive
    assert 0 < _flags(out) < CHUNKS
    result = subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    _check_complete(out, reference)


@pytest.mark.slow
def test_two_torchrun_processes_equal_one(reference, tmp_path):
    out = tmp_path / "two.zarr"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2",
                             *_cli(out, "--workers", "0")[1:]], env=ENV, cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    _check_complete(out, reference)


def test_a_second_writer_is_refused_while_the_first_lives(tmp_path):
    """The store's lock: a live writer holds it, a killed one does not."""
    from xai_utils.runner.store import StoreBusyError, lock_store

    out = tmp_path / "locked.zarr"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; "
        "from xai_utils.runner.store import lock_store; "
        f"h = lock_store(Path({str(out)!r})); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusyError, match="another running process"):
            lock_store(out)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    lock_store(out).close()  # the kill released it


def test_zarr_writes_files_atomically(tmp_path, monkeypatch):
    """What resume relies on: zarr (>= 3.1.3) writes a file under a temporary name and renames
    it into place, so a write that dies before the rename leaves the old file whole (and a
    temporary, which `open_store` removes)."""
    from xai_utils.runner.store import remove_partial_files

    arr = zarr.create_array(tmp_path / "a.zarr", shape=(4,), chunks=(4,), dtype="int64",
                            fill_value=0)
    arr[:] = [1, 2, 3, 4]
    before = store_files(tmp_path / "a.zarr")
    monkeypatch.setattr(Path, "replace", lambda self, target: None)  # dies before renaming
    arr[:] = [5, 6, 7, 8]
    monkeypatch.undo()
    left = store_files(tmp_path / "a.zarr")
    assert {k for k in left if k.endswith(".partial")}, "no temporary file: not atomic"
    assert remove_partial_files(tmp_path / "a.zarr") == 1
    assert store_files(tmp_path / "a.zarr") == before
    assert zarr.open_array(tmp_path / "a.zarr", mode="r")[:].tolist() == [1, 2, 3, 4]
