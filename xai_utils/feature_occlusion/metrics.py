"""The metrics of feature occlusion (Dowling 2018, "Deep Introspection", MEng thesis, 3.5).

`evaluate` occludes many feature subsets (`subsets`) and runs them through the
model in large batches; `analyze` reads the four metrics off those predictions:

- largest change of confidence (3.5.1): the subset whose occlusion lowers the original
  class's probability most (exhaustive over 2^n subsets for n <= 12, sampled beyond);
- most important feature (3.5.2): the single feature whose occlusion lowers it most;
  it also orders the features in the tool;
- minimum features to keep (3.5.3, the smallest sufficient region of Dabkowski & Gal 2017):
  the fewest features left visible (all others occluded) with the original top-1 class;
- minimum features to occlude (3.5.4, the smallest destroying region): the fewest
  features whose occlusion changes the top-1 class (None when no subset does).
Ties between subsets of the same size go to the larger probability change.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from xai_utils.core.model_state import forward_batch, merged_batchnorm
from xai_utils.feature_occlusion.occluder import Occluder, pixel_range


@torch.no_grad()
def evaluate(model, x: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor,
             strategy: str = "pixelate", batch_size: int | None = None,
             progress: bool = False, **occlude_params) -> torch.Tensor:
    """Softmax probabilities (M x classes) of `x` (C x H x W) with each subset occluded;
    `batch_size`: subsets per forward pass (default: `forward_batch`)."""
    if "low" not in occlude_params and strategy != "blur":
        low, high = pixel_range(model)
        occlude_params.update(low=low, high=high)
    occluder = Occluder(x, masks, strategy, **occlude_params)
    batch_size = batch_size or forward_batch(*x.shape[-2:], x.device)
    out, batch = [], None
    starts = range(0, len(chosen), batch_size)
    with merged_batchnorm(model):
        for s in tqdm(starts, desc="subsets", disable=not progress):
            batch = occluder(chosen[s:s + batch_size], into=batch)  # reuses the last batch
            out.append(model(batch).softmax(1))
    return torch.cat(out)


def _subset_list(row: torch.Tensor) -> list[int]:
    return row.nonzero()[:, 0].tolist()


def analyze(probs: torch.Tensor, chosen: torch.Tensor, target: int | None = None) -> dict:
    """The four metrics of thesis 3.5 from subset predictions (row 0..M-1 of `chosen`).

    The unoccluded image must be among the subsets (the empty row). `target`: the class
    whose confidence is tracked (default: the unoccluded top-1 class).
    """
    chosen = chosen.to(probs.device).bool()
    n = chosen.shape[1]
    size = chosen.sum(1)
    empty = (size == 0).nonzero()
    if len(empty) == 0:
        raise ValueError("the subsets must include the empty one (nothing occluded)")
    base = probs[empty[0, 0]]
    original = int(base.argmax())
    target = original if target is None else int(target)
    drop = base[target] - probs[:, target]
    top1 = probs.argmax(1)
    result: dict = {"original_class": original, "target": target,
                    "original_confidence": float(base[target]), "n_features": n}
    best = int(drop.argmax())
    result["largest_change"] = {"occluded": _subset_list(chosen[best]),
                                "change": float(drop[best])}
    singles = torch.full((n,), float("nan"), dtype=probs.dtype, device=probs.device)
    rows = (size == 1).nonzero()[:, 0]
    singles[chosen[rows].float().argmax(1)] = drop[rows]
    result["single_drops"] = singles.tolist()
    result["most_important"] = int(torch.nan_to_num(singles, nan=-1e9).argmax()) if n else None
    big = torch.tensor(1e9, dtype=probs.dtype, device=probs.device)
    # keep: visible = complement of occluded; top-1 unchanged; fewest visible, then least drop
    kept = n - size
    ok = top1 == original
    score = torch.where(ok, kept.to(probs.dtype) * 10 + drop, big)
    i = int(score.argmin())
    result["min_keep"] = ({"visible": _subset_list(~chosen[i]), "count": int(kept[i]),
                           "confidence": float(probs[i, target])} if ok[i] else None)
    changed = top1 != original
    score = torch.where(changed, size.to(probs.dtype) * 10 - drop, big)
    i = int(score.argmin())
    result["min_occlude"] = ({"occluded": _subset_list(chosen[i]), "count": int(size[i]),
                              "new_class": int(top1[i])} if changed[i] else None)
    return result


def subset_index(row: torch.Tensor) -> int:
    """Row number of a subset in the exhaustive enumeration of `subsets`."""
    return int((row.long().cpu() << torch.arange(len(row))).sum())


def window_agreement(drop: torch.Tensor, masks: torch.Tensor) -> dict:
    """Where a sliding-window occlusion map (H x W, the drop of p at each pixel; Zeiler &
    Fergus 2014) stands to features (n x H x W bools): its largest drop's pixel and distance
    (px) to the nearest feature pixel (0: on a feature), the mean drop on the features'
    pixels and on the rest, and the share of feature pixels where the windows raise p."""
    union = masks.any(0).to(drop.device)
    drop = drop.float()
    row, col = divmod(int(drop.argmax()), drop.shape[-1])
    yx = union.nonzero().float()
    distance = (float(((yx - yx.new_tensor([row, col])) ** 2).sum(1).sqrt().min())
                if len(yx) else None)
    return {"peak": [row, col], "peak_distance": distance,
            "mean_drop_on_features": _mean(drop[union]), "mean_drop_elsewhere": _mean(drop[~union]),
            "raise_share_on_features": _mean((drop[union] < 0).float())}


def _mean(values: torch.Tensor) -> float | None:
    return float(values.mean()) if values.numel() else None
