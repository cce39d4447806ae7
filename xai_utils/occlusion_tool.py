"""The metrics of feature occlusion (Dowling 2018, "Deep Introspection", 3.5) and the
interactive occlusion tool (thesis 5.3.5, the web tool's "Occlusion" tab, as a widget).

`evaluate` occludes many feature subsets (`features.subsets`) and runs them through the
model in large batches; `analyse` reads the four metrics off those predictions:

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

from xai_utils import features as fx
from xai_utils.lrp.canonizers import merged_batchnorm
from xai_utils.models import forward_batch


@torch.no_grad()
def evaluate(model, x: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor,
             strategy: str = "pixelate", batch_size: int | None = None,
             progress: bool = False, **occlude_params) -> torch.Tensor:
    """Softmax probabilities (M x classes) of `x` (C x H x W) with each subset occluded;
    `batch_size`: subsets per forward pass (default: `models.forward_batch`)."""
    if "low" not in occlude_params and strategy != "blur":
        low, high = fx.pixel_range(model)
        occlude_params.update(low=low, high=high)
    occluder = fx.Occluder(x, masks, strategy, **occlude_params)
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


def analyse(probs: torch.Tensor, chosen: torch.Tensor, target: int | None = None) -> dict:
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
    """Row number of a subset in the exhaustive enumeration of `features.subsets`."""
    return int((row.long().cpu() << torch.arange(len(row))).sum())


class OcclusionTool:
    """The thesis's occlusion tool: a checkbox per feature (most important first), the
    occluded image and the top-5 bars. Predictions come from the cache of all 2^n subsets
    (`evaluate` on `features.subsets(n)`), so ticking a box costs one occlusion, no forward.
    """

    def __init__(self, model, x: torch.Tensor, masks: torch.Tensor, probs: torch.Tensor,
                 order: list[int] | None = None, strategy: str = "pixelate", top: int = 5,
                 **occlude_params) -> None:
        n = masks.shape[0]
        if probs.shape[0] != 2**n:
            raise ValueError(f"need all {2**n} subset predictions for {n} features, "
                             f"got {probs.shape[0]}")
        self.model, self.x, self.masks, self.probs = model, x, masks, probs
        self.order = list(range(n)) if order is None else list(order)
        self.strategy, self.top = strategy, top
        if "low" not in occlude_params and strategy != "blur":
            low, high = fx.pixel_range(model)
            occlude_params.update(low=low, high=high)
        self.occluder = fx.Occluder(x, masks, strategy, **occlude_params)

    def state(self, occluded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image C x H x W, top probabilities, top classes) with `occluded` hidden."""
        row = torch.zeros(self.masks.shape[0], dtype=torch.bool)
        row[list(occluded)] = True
        image = self.occluder(row[None])[0]
        p, c = self.probs[subset_index(row)].topk(min(self.top, self.probs.shape[1]))
        return image, p, c

    def draw(self, occluded, axes=None):
        """Draw the occluded image (features outlined) and the top bars on two axes."""
        import matplotlib.pyplot as plt

        from xai_utils.classes import class_name
        from xai_utils.images import to_image

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(1, 1.1))
        image, p, c = self.state(occluded)
        axes[0].clear(), axes[1].clear()
        axes[0].imshow(to_image(image, self.model))
        hidden = self.masks[list(occluded)].any(0).cpu() if len(occluded) else None
        if hidden is not None:   # outline only what is hidden, so the occlusion stays visible
            axes[0].contour(hidden, levels=[0.5], colors="yellow", linewidths=0.6, alpha=0.6)
        axes[0].set_title(f"occluded: {sorted(int(o) + 1 for o in occluded) or 'none'}",
                          fontsize=9)
        axes[0].axis("off")
        names = [class_name(self.model, int(i))[:24] for i in c]
        axes[1].barh(range(len(p))[::-1], p.cpu().numpy(), color="tab:blue")
        axes[1].set_yticks(range(len(p))[::-1], names, fontsize=9)
        axes[1].set_xlim(0, 1)
        axes[1].set_xlabel("probability")
        return axes

    def widget(self):
        """ipywidgets box: checkboxes (feature, single-feature drop) + live figure."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt

        from xai_utils.classes import class_name

        drops = analyse(self.probs, fx.subsets(self.masks.shape[0]))["single_drops"]
        boxes = [widgets.Checkbox(value=False, description=f"feature {f + 1} "
                                  f"(drop {drops[f]:+.2f})", indent=False)
                 for f in self.order]
        out = widgets.Output()
        bars = widgets.HTML(layout=widgets.Layout(margin="0 0 0 12px"))
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(1, 1.1))
        plt.close(fig)

        def update(_=None) -> None:
            hidden = [f for f, b in zip(self.order, boxes, strict=True) if b.value]
            self.draw(hidden, axes)
            _, p, c = self.state(hidden)
            bars.value = "top-5: " + ", ".join(f"{class_name(self.model, int(i))} {float(q):.1%}"
                                               for q, i in zip(p, c, strict=True))
            with out:
                out.clear_output(wait=True)
                fig.tight_layout()
                from IPython.display import display
                display(fig)

        for b in boxes:
            b.observe(update, names="value")
        update()
        return widgets.HBox([widgets.VBox(boxes), widgets.VBox([out, bars])])
