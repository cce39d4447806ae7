"""Every saliency method scored side by side: quality, sanity, speed and memory.

- `run_method` / `method_settings`: one call per method with evaluation-sized parameters
  (iterative methods at a chosen number of steps, occlusion windows sized to the input).
- `quality`: pointing game, energy in mask, deletion and insertion AUC (`xu.metrics`), with
  a centre and a random map as the floor (`baseline_maps`).
- `cascading_randomization`: the model-parameter randomisation test of Adebayo et al.,
  *Sanity Checks for Saliency Maps*, NeurIPS 2018, Sec. 3.1: layers are re-initialised from
  the top one by one and each method's maps are compared with the original ones by Spearman
  rank correlation; a map that does not change with the weights fails.
- `profile` / `memory_growth`: time and peak memory of one call, and what 100 calls leave.
"""

from __future__ import annotations

import copy
import ctypes
import gc
import statistics
import threading
import time
from pathlib import Path

import torch
from torch import nn

from xai_utils import metrics
from xai_utils.explain import explain, methods
from xai_utils.hooks import registered_hooks
from xai_utils.models import forward_batch
from xai_utils.viz import figures_dir

ITERATIVE = ("perturbation_cnn", "meaningful_perturbation", "extremal_perturbation")


def method_settings(model: nn.Module, steps: int | None = None) -> dict[str, dict]:
    """Keyword arguments per registered method for an evaluation run on `model`.

    `steps` caps the iterations of the optimisation methods (None: each method's default,
    the papers' 300 to 1000). Occlusion uses a window of 1/7 of the input side and half of
    it as stride (16 / 8 px at 112 px, 32 / 16 px at 224 px).
    """
    side = getattr(getattr(model, "xai", None), "input_size", 224)
    window = max(2, side // 7)
    batch = forward_batch(side, side, next(model.parameters()).device)
    quiet = {"progress": False} | ({} if steps is None else {"steps": steps})
    table = {"occlusion": {"window": window, "stride": window // 2, "batch_size": batch}}
    for name in ITERATIVE:
        table[name] = dict(quiet)
    return {name: table.get(name, {}) for name in methods()}


def run_method(model: nn.Module, x: torch.Tensor, target: torch.Tensor, name: str,
               params: dict | None = None, batch_size: int = 100) -> torch.Tensor:
    """B x H x W saliency of `name` for the batch, computed `batch_size` images at a time."""
    params = params or {}
    maps = [explain(name, model, x[i:i + batch_size], target[i:i + batch_size], **params)
            .saliency.detach() for i in range(0, len(x), batch_size)]
    return torch.cat(maps)


def baseline_maps(kind: str, n: int, height: int, width: int, seed: int = 0,
                  device=None) -> torch.Tensor:
    """Floors for every score: "centre" (peak at the image centre) or "random" (uniform)."""
    if kind == "centre":
        yy = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2
        xx = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2
        centre = -(yy[:, None] ** 2 + xx[None] ** 2)
        return (centre - centre.min()).expand(n, -1, -1).contiguous()
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, height, width, generator=gen).to(device)
    raise ValueError(f"unknown baseline {kind!r}: use 'centre' or 'random'")


def quality(model: nn.Module, x: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
            masks: torch.Tensor | None = None, auc_images: int | None = None,
            auc_steps: int = 16, batch_size: int = 128) -> dict[str, float]:
    """Mean scores of `maps` for `model` on `x`: deletion / insertion AUC on the first
    `auc_images` images (None: all), pointing game and energy in mask when `masks` is given."""
    scores: dict[str, float] = {"images": len(x)}
    if masks is not None:
        scores["pointing_game"] = float(metrics.pointing_game(maps, masks).float().mean())
        scores["energy_in_mask"] = float(metrics.energy_in_mask(maps, masks).mean())
    k = len(x) if auc_images is None else min(auc_images, len(x))
    if k:
        args = (model, x[:k], maps[:k], target[:k], auc_steps)
        scores["deletion_auc"] = float(metrics.deletion_auc(*args, batch_size=batch_size).mean())
        scores["insertion_auc"] = float(metrics.insertion_auc(*args, batch_size=batch_size).mean())
        scores["auc_images"] = k
    return scores


def peaks_on_own_half(maps: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """B bools: does each map of a side-by-side composite peak on its class's half?
    `left[i]` is True when image i's class is the one on the left."""
    width = maps.shape[-1]
    column = maps.flatten(1).argmax(1) % width
    return (column < width // 2) == left.to(column.device)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """B rank correlations of two batches of maps, ties given their average rank."""
    ra, rb = _average_ranks(a.flatten(1).double()), _average_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denom = (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)
    return (ra * rb).sum(1) / denom


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    ordered = values.sort(dim=1).values
    low = torch.searchsorted(ordered, values, right=False)
    high = torch.searchsorted(ordered, values, right=True)
    return (low + high - 1).double() / 2


def parametrised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own weights, from the output back to the input."""
    names = [name for name, m in model.named_modules()
             if name and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


@torch.no_grad()
def _reinitialise(module: nn.Module) -> None:
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        for p in module.parameters(recurse=False):
            p.normal_(0, 0.02)


def cascading_randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                            settings: dict[str, dict], stages: list[list[str]] | None = None,
                            seed: int = 0) -> dict[str, list[float]]:
    """Mean Spearman correlation between each method's maps on the trained model and on
    copies whose layers are re-initialised cumulatively from the top (Adebayo et al. 2018).

    `stages`: groups of layer names randomised together, top first (default: one stage per
    parametrised layer). Returns {method: [1.0, after stage 1, after stage 2, ...]}.
    The targets stay the ones given, so every map explains the same class throughout.
    """
    stages = stages or [[name] for name in parametrised_layers(model)]
    original = {name: run_method(model, x, target, name, params)
                for name, params in settings.items()}
    curves = {name: [1.0] for name in settings}
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    torch.manual_seed(seed)
    for stage in stages:
        for layer in stage:
            _reinitialise(modules[layer])
        for name, params in settings.items():
            maps = run_method(randomised, x, target, name, params)
            curves[name].append(float(spearman(original[name], maps).mean()))
    return curves


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
    start = time.perf_counter()
    fn()
    synchronize(device)
    if time.perf_counter() - start > slow:
        repeats = 1
    gc.collect()
    _release_freed_memory()
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with _PeakRSS() as watch:
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = watch.peak - watch.start
    return {"seconds": statistics.median(times), "peak_mb": peak / 2**20}


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


def markdown_table(rows: list[dict], columns: list[str], formats: dict | None = None) -> str:
    """A GitHub markdown table of `rows` (dicts) in the order of `columns`."""
    formats = formats or {}

    def cell(row, col):
        value = row.get(col, "")
        if value is None or value == "":
            return "–"
        fmt = formats.get(col)
        return format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def save_tables(markdown: str, name: str) -> Path:
    """Write the results tables as figures/<name>.md (beside the figures; `make figures`
    copies it into the README)."""
    if not name or "/" in name or "\\" in name:
        raise ValueError(f"table name must be a plain file name, got {name!r}")
    out = figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path
