"""Uncertainty of mean scores over images, and comparisons that name ties.

Percentile bootstrap over images (Efron & Tibshirani, "An Introduction to the Bootstrap",
1993, ch. 13): resample the images with replacement, take the mean of each resample, and
read the interval off the quantiles of those means. Paired comparisons resample the same
images for both methods, so the interval is that of the mean per-image difference.
Seeded: the same scores give the same interval.
"""

from __future__ import annotations

import torch

LEVEL = 0.95
RESAMPLES = 4000


def _values(values) -> torch.Tensor:
    v = torch.as_tensor(values).detach().double().flatten().cpu()
    if not len(v):
        raise ValueError("no values to bootstrap")
    return v


def _means(v: torch.Tensor, resamples: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(v), (resamples, len(v)), generator=gen)
    return v[idx].mean(1)


def bootstrap_ci(values, level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of per-image `values` and its percentile bootstrap
    interval at `level` (0.95: the 2.5th and 97.5th percentiles of resampled means).
    One value has no interval: low and high are NaN (and `versus` calls it a tie)."""
    v = _values(values)
    if len(v) < 2:
        return float(v.mean()), float("nan"), float("nan")
    means = _means(v, resamples, seed)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return float(v.mean()), lo, hi


def paired_difference(a, b, level: float = LEVEL, resamples: int = RESAMPLES,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the per-image difference a - b on the same images in the same
    order; `a` and `b` of different lengths are compared on their common first images."""
    a, b = _values(a), _values(b)
    n = min(len(a), len(b))
    return bootstrap_ci(a[:n] - b[:n], level, resamples, seed)


def versus(a, b, higher_is_better: bool = True, **kwargs) -> str:
    """"better", "worse" or "tied": whether the interval of the paired difference a - b
    excludes zero, and on which side (no interval, from a single image: "tied")."""
    _, lo, hi = paired_difference(a, b, **kwargs)
    if lo > 0 or hi < 0:
        return "better" if (lo > 0) == higher_is_better else "worse"
    return "tied"


def top(scores: dict[str, object], higher_is_better: bool = True, **kwargs) -> list[str]:
    """The leader by mean (over the images every entry has) and every entry tied with it:
    the names whose paired difference with the leader has an interval that holds zero.
    Ties are reported, never broken by name."""
    n = min(len(_values(v)) for v in scores.values())
    means = {k: float(_values(v)[:n].mean()) for k, v in scores.items()}
    sign = 1 if higher_is_better else -1
    lead = max(means, key=lambda k: sign * means[k])
    return [k for k in scores if k == lead
            or versus(scores[k], scores[lead], higher_is_better, **kwargs) == "tied"]


def split(scores: dict[str, object], reference, higher_is_better: bool = True,
          **kwargs) -> dict[str, list[str]]:
    """{"better": [...], "tied": [...], "worse": [...]}: each entry against `reference`
    (per-image scores of a baseline map) by `versus`."""
    out: dict[str, list[str]] = {"better": [], "tied": [], "worse": []}
    for name, values in scores.items():
        out[versus(values, reference, higher_is_better, **kwargs)].append(name)
    return out
