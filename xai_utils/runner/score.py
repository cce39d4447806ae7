"""Scoring a store of maps, streamed chunk by chunk (shared among torchrun processes).

Metrics come from `xai_utils.evaluation.metrics`: `pointing` (the pointing game as in
TorchRay's benchmark: the map's maximum hits when it lies within 15 px of a box of the
explained class, measured in original image pixels; (image, class) pairs whose boxes are all
PASCAL-difficult are left out; the accuracy is the mean of the per-class accuracies; the
difficult subset of Zhang et al. 2016 is reported separately), `energy` (share of positive
saliency inside the boxes), `deletion` and `insertion` (AUCs; these reload the images and
need the model, checked against the store's weight hash). One departure from TorchRay: a
maximum at exactly 15 px counts as a hit (the metric grows the boxes by a closed disk).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import zarr
from tqdm.auto import tqdm

from xai_utils.core.inputs import input_spec, model_info
from xai_utils.core.model_state import model_device
from xai_utils.evaluation import metrics as M
from xai_utils.runner import store as st
from xai_utils.runner.datasets import ItemDataset, read_source
from xai_utils.runner.run import _broadcast, distributed_context, weight_hash

METRICS = ("pointing", "energy", "deletion", "insertion")


def _frame(h: int, w: int, size: int, crop_pct: float) -> tuple[float, float, int, int]:
    """Scale x, scale y, left, top of the resize and centre crop the runner applied."""
    short = int(round(size / crop_pct))
    scale = short / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    return new_w / w, new_h / h, (new_w - size) // 2, (new_h - size) // 2


def box_mask(boxes: np.ndarray, h: int, w: int, size: int, crop_pct: float) -> torch.Tensor:
    """size x size bool mask of the map pixels whose centres fall in any box (x0, y0, x1, y1
    in original pixels)."""
    sx, sy, left, top = _frame(h, w, size, crop_pct)
    u = (np.arange(size) + left + 0.5) / sx
    v = (np.arange(size) + top + 0.5) / sy
    mask = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask |= ((v >= y0) & (v < y1))[:, None] & ((u >= x0) & (u < x1))[None]
    return torch.from_numpy(mask)


@dataclass
class Scores:
    """Per-item rows (index, file, target, difficult, one column per metric) and the table."""

    rows: list[dict]
    table: list[dict]

    def markdown(self) -> str:
        lines = ["| metric | all | n | difficult subset | n |", "|---|---|---|---|---|"]
        for r in self.table:
            a, d = (f"{v:.4f}" if not math.isnan(v) else "n/a" for v in (r["all"],
                                                                      r["difficult"]))
            lines.append(f"| {r['metric']} | {a} | {r['n']} | {d} | {r['n_difficult']} |")
        return "\n".join(lines)


def _mean(rows: list[dict], name: str) -> tuple[float, int]:
    vals = [r for r in rows if not math.isnan(r[name])]
    if name != "pointing":
        return (float(np.mean([r[name] for r in vals])) if vals else math.nan), len(vals)
    per_class: dict[int, list[float]] = {}  # TorchRay: the mean of per-class hit rates
    for r in vals:
        per_class.setdefault(r["target"], []).append(r[name])
    acc = [np.mean(v) for v in per_class.values()]
    return (float(np.mean(acc)) if acc else math.nan), len(vals)


def _aggregate(rows: list[dict], names: list[str]) -> list[dict]:
    table = []
    for name in names:
        a, n = _mean(rows, name)
        d, nd = _mean([r for r in rows if r["difficult"]], name)
        table.append({"metric": name, "all": a, "n": n, "difficult": d, "n_difficult": nd})
    return table


def score_store(path: str | Path, metrics: tuple[str, ...] | list[str] = ("pointing", "energy"),
                *, model=None, data=None, tolerance: int = 15, steps: int = 32,
                batch_size: int = 64, out: str | Path | None = None,
                progress: bool = True) -> Scores:
    """Score the maps of the store at `path`; with `out`, write `out`.csv (per item) and
    `out`.md (the table). `model` defaults to the store's model name (its weight hash is
    checked), `data` to the store's data (needed for deletion and insertion)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    group = zarr.open_group(path, mode="r")
    run = dict(group.attrs["run"])
    need_model = bool({"deletion", "insertion"} & set(metrics))
    if need_model:
        if model is None or isinstance(model, str):
            from xai_utils.models import load_model
            model = load_model(model or run["model"])
        if weight_hash(model) != run["weights"]:
            raise ValueError(f"the model's weights differ from those of the run in {path}")
    dev = model_device(model) if model is not None else torch.device("cpu")
    rank, world, initialised = distributed_context(dev)
    try:
        size, chunk = run["input_size"], run["chunk"]
        crop = run.get("crop_pct", model_info(model).crop_pct if model is not None else 1.0)
        done = [int(c) for c in np.flatnonzero(group["done"][:] == 1)]
        mine = done[rank::world]
        boxes = group["boxes"][:]
        by_item: dict[int, list] = {}
        for row in boxes:
            by_item.setdefault(int(row[0]), []).append(row[1:])
        source = loader_ds = None
        if need_model:
            source = read_source(data if data is not None else run["data"],
                                 model_info(model).class_names)
            loader_ds = ItemDataset(source, size, crop, model_info(model).interpolation)
        rows = []
        for c in tqdm(mine, disable=not progress or rank != 0, desc="score", unit="chunk"):
            sl = slice(c * chunk, min((c + 1) * chunk, group["status"].shape[0]))
            status = group["status"][sl]
            keep = np.flatnonzero(status == st.DONE)
            if not len(keep):
                continue
            idx = keep + sl.start
            sal = torch.from_numpy(group["maps"][sl][keep].astype(np.float32)).to(dev)
            target = group["target"][sl][keep]
            hw = group["size"][sl][keep]
            difficult = group["difficult"][sl][keep]
            skip = group["skip_pointing"][sl][keep]
            files = group["file"][sl][keep]
            result = {name: np.full(len(keep), np.nan) for name in metrics}
            has_box = np.array([i in by_item for i in idx])
            if has_box.any() and {"pointing", "energy"} & set(metrics):
                masks = torch.stack([box_mask(np.array(by_item.get(int(i), [])), h, w, size,
                                              crop) for i, (h, w) in zip(idx, hw, strict=True)])
                masks = masks.to(dev)
                if "pointing" in metrics:  # one call per tolerance (per original image size)
                    scored = np.flatnonzero(has_box & ~skip)
                    tols = np.array([max(1, round(tolerance * sum(_frame(*hw[j], size, crop)[:2])
                                                  / 2)) for j in scored], dtype=int)
                    for tol in np.unique(tols):
                        js = torch.as_tensor(scored[tols == tol], device=dev)
                        hits = M.pointing_game(sal[js], masks[js], tolerance=int(tol))
                        result["pointing"][scored[tols == tol]] = hits.float().cpu().numpy()
                if "energy" in metrics:
                    energy = M.energy_in_mask(sal, masks).cpu().numpy()
                    result["energy"][has_box] = energy[has_box]
            if need_model:
                pixels = torch.stack([loader_ds[int(i)]["pixels"] for i in idx])
                x = input_spec(model).normalize(pixels.permute(0, 3, 1, 2).float() / 255)
                x = x.to(dev)
                tgt = torch.as_tensor(target, device=dev)
                for name, fn in (("deletion", M.deletion_auc), ("insertion", M.insertion_auc)):
                    if name in metrics:
                        result[name] = fn(model, x, sal, tgt, steps=steps,
                                          batch_size=batch_size).cpu().numpy()
            for j, i in enumerate(idx):
                rows.append({"index": int(i), "file": str(files[j]), "target": int(target[j]),
                             "difficult": bool(difficult[j]),
                             **{n: float(result[n][j]) for n in metrics}})
        if world > 1:
            gathered = [None] * world if rank == 0 else None
            dist.gather_object(rows, gathered, dst=0)
            rows = [r for part in gathered for r in part] if rank == 0 else []
        scores = None
        if rank == 0:
            rows.sort(key=lambda r: r["index"])
            scores = Scores(rows, _aggregate(rows, list(metrics)))
            if out is not None:
                _write(scores, Path(out))
        return _broadcast(scores, world)
    finally:
        if initialised:
            dist.destroy_process_group()


def _write(scores: Scores, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as fh:
        if scores.rows:
            writer = csv.DictWriter(fh, fieldnames=list(scores.rows[0]))
            writer.writeheader()
            writer.writerows(scores.rows)
    out.with_suffix(".md").write_text(scores.markdown() + "\n")
