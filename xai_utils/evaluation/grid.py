"""The grid pointing game (GridPG; Böhle, Fritz & Schiele, "Convolutional Dynamic Alignment
Networks for Interpretable Classifications", CVPR 2021; Rao, Böhle & Schiele, "Towards Better
Understanding Attribution Methods", CVPR 2022, sec. 3.1).

Photos of four different classes, each classified confidently on its own, are tiled into a
2 x 2 grid. Each cell's class is explained on the whole grid; the localisation score is the
positive attribution inside that cell over the positive attribution in the grid (1 = all in
the right cell, 0.25 = spread evenly). The cells keep their full resolution (the grid is
twice the model's input side), as in the papers, which works for networks that pool
globally.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from xai_utils.core.inputs import model_info
from xai_utils.data.images import preprocess
from xai_utils.methods.lrp import mark_pixels


@dataclass
class Grids:
    """`images` (G x 3 x 2S x 2S, normalised), `targets` (G x 4: each cell's class, cells in
    row-major order), `members` (G x 4 indices into the photos), `names` and `probability`
    (each photo classified alone)."""

    images: torch.Tensor
    targets: torch.Tensor
    members: torch.Tensor
    names: list[str]
    probability: torch.Tensor


def confident_photos(model: nn.Module, photos: dict[str, object], min_probability: float
                     ) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Photos whose top class has at least `min_probability` alone, one per class (the most
    confident): names, the model's inputs (N x 3 x S x S, `preprocess`), classes and
    probabilities."""
    cells = preprocess(list(photos.values()), model)
    with torch.no_grad():
        probs = model(cells).softmax(1).cpu()
    prob, cls = probs.max(1)
    best: dict[int, int] = {}
    for i in prob.argsort(descending=True).tolist():
        if prob[i] >= min_probability and int(cls[i]) not in best:
            best[int(cls[i])] = i
    keep = sorted(best.values())
    return [list(photos)[i] for i in keep], cells[keep].cpu(), cls[keep], prob[keep]


def make_grids(model: nn.Module, photos: dict[str, object], n_grids: int,
               min_probability: float = 0.3, seed: int = 0) -> Grids:
    """Up to `n_grids` 2 x 2 grids of four different confident photos (distinct sets of four,
    each in a random order)."""
    names, cells, classes, prob = confident_photos(model, photos, min_probability)
    if len(names) < 4:
        raise ValueError(f"GridPG needs 4 photos of different classes classified with p >= "
                         f"{min_probability}; got {len(names)}: {names}")
    gen = torch.Generator().manual_seed(seed)
    sets = list(itertools.combinations(range(len(names)), 4))
    order = torch.randperm(len(sets), generator=gen)[:n_grids].tolist()
    members = torch.stack([torch.tensor(sets[i])[torch.randperm(4, generator=gen)]
                           for i in order])
    # normalisation is per channel, so tiling normalised cells normalises the grid
    top = torch.cat([cells[members[:, 0]], cells[members[:, 1]]], dim=3)
    bottom = torch.cat([cells[members[:, 2]], cells[members[:, 3]]], dim=3)
    return Grids(torch.cat([top, bottom], dim=2), classes[members], members, names, prob)


def cell_masks(height: int, width: int, device=None) -> torch.Tensor:
    """4 x H x W bool masks of the 2 x 2 cells, row-major."""
    rows = torch.arange(height, device=device) < height // 2
    cols = torch.arange(width, device=device) < width // 2
    return torch.stack([r[:, None] & c[None, :] for r in (rows, ~rows) for c in (cols, ~cols)])


def localisation(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """GridPG score of each map (B x H x W) for its cell (B indices 0-3): positive attribution
    in the cell / positive attribution in the grid (0 where the map has none)."""
    positive = maps.clamp(min=0)
    inside = (positive * cell_masks(*maps.shape[-2:], maps.device)[cells]).flatten(1).sum(1)
    return inside / positive.flatten(1).sum(1).clamp_min(1e-30)


def peak_in_cell(maps: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Whether each map's maximum lies in its cell."""
    flat = maps.flatten(1).argmax(1)
    masks = cell_masks(*maps.shape[-2:], maps.device)[cells].flatten(1)
    return masks.gather(1, flat[:, None])[:, 0]


def summarise(scores: np.ndarray, cells: int = 4) -> dict[str, float]:
    """Mean, median, quartiles, and the mean's 95 % bootstrap interval over grids (the
    `cells` maps of one grid, consecutive in `scores`, share its photos: they are resampled
    together)."""
    from xai_utils.evaluation.stats import bootstrap_ci

    scores = np.asarray(scores, dtype=np.float64)
    per_grid = scores.reshape(-1, cells).mean(1) if len(scores) % cells == 0 else scores
    _, low, high = bootstrap_ci(per_grid)
    return {"mean": float(np.mean(scores)), "median": float(np.median(scores)),
            "q25": float(np.quantile(scores, 0.25)), "q75": float(np.quantile(scores, 0.75)),
            "low": low, "high": high}


class Disconnected(nn.Module):
    """DiFull (Rao et al. 2022, sec. 3.2): each cell of a 2 x 2 grid goes through the model's
    features on its own; the four feature maps are stitched into one grid map (the module
    `stitch`, where Grad-CAM reads) and each cell's logits come from its own part of that map
    alone. The output has 4 K logits, cell-major: class k of cell c is `c * K + k`, and no
    pixel outside cell c can change it, so attribution outside the cell is provably wrong.
    Needs `forward_features` / `forward_head` (timm models)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise TypeError(f"{type(model).__name__} has no forward_features / forward_head "
                            "to split it into features and head")
        self.model, self.stitch = model, nn.Identity()
        info = model_info(model)
        self.xai = replace(info, input_size=2 * info.input_size,
                           class_names=tuple(f"cell {c}: {name}" for c in range(4)
                                             for name in info.class_names))

    @staticmethod
    def tiles(x: torch.Tensor) -> torch.Tensor:
        """B x C x 2h x 2w grids -> 4B x C x h x w cells (image-major, cells row-major)."""
        h, w = x.shape[-2:]
        cells = x.unflatten(2, (2, h // 2)).unflatten(4, (2, w // 2))
        return cells.permute(0, 2, 4, 1, 3, 5).flatten(0, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        features = self.model.forward_features(mark_pixels(self.tiles(x), self.tiles))
        d, fh, fw = features.shape[1:]
        grid = self.stitch(features.unflatten(0, (b, 2, 2)).permute(0, 3, 1, 4, 2, 5)
                           .reshape(b, d, 2 * fh, 2 * fw))
        apart = grid.unflatten(2, (2, fh)).unflatten(4, (2, fw)).permute(0, 2, 4, 1, 3, 5)
        return self.model.forward_head(apart.flatten(0, 2)).unflatten(0, (b, 4)).flatten(1)
