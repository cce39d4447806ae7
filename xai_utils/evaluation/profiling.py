"""Time and peak memory of one call (`profile`), interleaved timings of several (`timed`),
every method's speed table (`speed_rows`) and what 100 calls leave (`memory_growth`). The
benchmark scripts, notebook 08 and `make gpu-check` time with these."""

from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time
from functools import partial

import torch
from torch import nn

from xai_utils.core.hooks import registered_hooks
from xai_utils.core.inputs import input_spec
from xai_utils.core.model_state import model_device
from xai_utils.core.registry import explain, method_info


class _PeakRSS:
    """Samples the process's resident memory every `interval` s while the block runs."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns, device: torch.device | str = "cpu", repeats: int = 3, warmup: int = 1,
          reduce=min) -> list[float]:
    """Seconds of each function in `fns`, the functions taking turns in every round (so that
    a noisy machine slows all alike), synchronised on a GPU; `reduce` over the `repeats`
    rounds after `warmup` untimed ones (min: the best; statistics.median)."""
    device = torch.device(device)
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for i, fn in enumerate(fns):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if round_ >= warmup:
                times[i].append(time.perf_counter() - start)
    return [reduce(t) for t in times]


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc), so that the resident memory sampled
    next rises with what a call really allocates instead of reusing an old peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def profile(fn, device: torch.device, repeats: int = 3, slow: float = 1.0) -> dict[str, float]:
    """Median seconds of `fn()` over `repeats` runs after one warm-up (one run when the
    warm-up took over `slow` s), and the peak memory those runs added (MB): CUDA's allocator
    peak on a GPU, sampled resident memory on the CPU."""
    if timed([fn], device, repeats=1, warmup=0)[0] > slow:
        repeats = 1
    gc.collect()
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with _PeakRSS() as watch:
        seconds = timed([fn], device, repeats=repeats, warmup=0, reduce=statistics.median)[0]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = watch.peak - watch.start
    return {"seconds": seconds, "peak_mb": peak / 2**20}


def forward_backward(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """One plain forward + backward pass to the input: the unit of every speed ratio."""
    def run() -> None:
        xg = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)
    return run


def _live_tensors() -> int:
    gc.collect()
    # type(), not isinstance(): a dead weak proxy or a deprecated module alias would raise
    # or warn when asked for its __class__
    return sum(1 for obj in gc.get_objects() if issubclass(type(obj), torch.Tensor))


def memory_growth(model: nn.Module, x: torch.Tensor, target: torch.Tensor, name: str,
                  params: dict | None = None, calls: int = 100) -> dict[str, float]:
    """Run `explain(name)` `calls` times; memory after the last call against after the first
    (resident memory on the CPU, allocated memory on a GPU), live tensors and hooks left."""
    import psutil

    params, process = params or {}, psutil.Process()
    dev = x.device

    def used() -> float:
        gc.collect()
        if dev.type == "cuda":
            return float(torch.cuda.memory_allocated(dev))
        return float(process.memory_info().rss)

    before = _live_tensors()
    explain(name, model, x, target, **params)
    first, tensors_first = used(), _live_tensors()
    for _ in range(calls - 1):
        explain(name, model, x, target, **params)
    last, tensors_last = used(), _live_tensors()
    return {"ratio": last / first, "growth_mb": (last - first) / 2**20,
            "tensors_after_first": tensors_first - before,
            "tensors_growth": tensors_last - tensors_first, "hooks": registered_hooks(model)}


def speed_rows(model: nn.Module, model_name: str, batches, settings: dict[str, dict],
               steps: int | None = None, seed: int = 0) -> list[dict]:
    """Time and peak memory of every method in `settings` on random inputs of each batch
    size, as ratios to one forward + backward pass of the same batch (notebook 08's speed
    table; `steps`: the iterations the optimisation methods were given, for the per-step
    ratio)."""
    dev, spec = model_device(model), input_spec(model)
    side = spec.info.input_size
    rows = []
    for b in batches:
        u = torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(seed)).to(dev)
        x = spec.low + u * (spec.high - spec.low)  # uniform noise over the model's input range
        with torch.no_grad():
            t = model(x).argmax(1)
        base = profile(forward_backward(model, x, t), dev)
        rows.append({"model": model_name, "batch": b, "method": "forward+backward",
                     "ms / image": 1000 * base["seconds"] / b, "x fwd+bwd": 1.0,
                     "peak MB": base["peak_mb"], "device": str(dev)})
        for name, params in settings.items():
            p = profile(partial(explain, name, model, x, t, **params), dev)
            n = steps if method_info(name).iterative else None
            ratio = p["seconds"] / base["seconds"]
            rows.append({"model": model_name, "batch": b, "method": name, "steps": n,
                         "ms / image": 1000 * p["seconds"] / b, "x fwd+bwd": ratio,
                         "x fwd+bwd per step": ratio / n if n else None,
                         "peak MB": p["peak_mb"], "device": str(dev)})
    return rows


SPEED_COLUMNS = ["model", "batch", "method", "steps", "ms / image", "x fwd+bwd",
                 "x fwd+bwd per step", "peak MB", "device"]
SPEED_FORMATS = {"ms / image": ".1f", "x fwd+bwd": ".2f", "x fwd+bwd per step": ".2f",
                 "peak MB": ".1f"}
