"""The interactive occlusion tool (Dowling 2018, "Deep Introspection", 5.3.5: the web tool's
"Occlusion" tab, as a widget) and `label_image`, the picture of a feature label map."""

from __future__ import annotations

import torch

from xai_utils.feature_occlusion.metrics import analyze, subset_index
from xai_utils.feature_occlusion.occluder import Occluder, pixel_range, subsets


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
            low, high = pixel_range(model)
            occlude_params.update(low=low, high=high)
        self.occluder = Occluder(x, masks, strategy, **occlude_params)

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

        from xai_utils.data.classes import class_name
        from xai_utils.data.images import to_image

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
        """ipywidgets box: checkboxes (feature, single-feature drop), the figure redrawn in
        place and the top-5 read-out."""
        import ipywidgets as widgets
        import matplotlib.pyplot as plt

        from xai_utils.data.classes import class_name
        from xai_utils.viz.live import LivePicture

        drops = analyze(self.probs, subsets(self.masks.shape[0]))["single_drops"]
        boxes = [widgets.Checkbox(value=False, description=f"feature {f + 1} "
                                  f"(drop {drops[f]:+.2f})", indent=False)
                 for f in self.order]
        picture = LivePicture()
        bars = widgets.HTML(layout=widgets.Layout(margin="0 0 0 12px"))
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), width_ratios=(1, 1.1))
        plt.close(fig)

        def update(_=None) -> None:
            hidden = [f for f, b in zip(self.order, boxes, strict=True) if b.value]
            self.draw(hidden, axes)
            fig.tight_layout()
            picture.show(fig, close=False)
            _, p, c = self.state(hidden)
            bars.value = "top-5: " + ", ".join(f"{class_name(self.model, int(i))} {float(q):.1%}"
                                               for q, i in zip(p, c, strict=True))

        for b in boxes:
            b.observe(update, names="value")
        update()
        return widgets.HBox([widgets.VBox(boxes), widgets.VBox([picture.box, bars])])


def label_image(labels, image=None, fade: float = 0.65, only=None):
    """H x W x 3 float picture of a label map: features in cycling tab20 colours (feature 1
    first) over a faded `image` (H x W x 3 in [0, 1]); `only`: the features to show."""
    import matplotlib
    import numpy as np

    lab = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if only is not None:
        lab = np.where(np.isin(lab, list(only)), lab, 0)
    base = np.ones(lab.shape + (3,)) if image is None else np.asarray(image, dtype=float)
    out = base * (1 - fade) + fade
    colours = np.asarray(matplotlib.colormaps["tab20"].colors)
    hit = lab > 0
    out[hit] = colours[(lab[hit] - 1) % len(colours)]
    return out
