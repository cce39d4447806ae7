"""Feature extraction and feature occlusion (Dowling 2018, "Deep Introspection", ch. 3).

A relevance map (LRP, thesis 3.3.1) is turned into a few *features*, connected islands of
relevant pixels (thesis 3.3.2, the "modified flood fill"):

1. zero a border band of `border` pixels (the original zeroes 5 px: LRP piles relevance on
   the zero-padded edge), then normalise each map to sum 1;
2. keep the pixels with normalised relevance >= `threshold / (H * W)` (thesis: 5 / HW);
3. join kept pixels whose centres lie within `distance` px (1.5 px = 8-connectivity,
   1.0 px = 4-connectivity);
4. drop clusters of `min_size` pixels or fewer (thesis: 20).

Departures: the flood fill is replaced by vectorised label propagation on the whole batch
(each kept pixel starts with its own index; repeatedly take the maximum label over the
neighbourhood footprint inside the mask, plus pointer jumping), which yields the same
components. Only positive relevance forms features (`sign="positive"`); `sign="absolute"`
thresholds |r| instead. Features are numbered 1..n per image by decreasing relevance mass.

Occlusion (thesis 3.4) of many feature subsets at once: `occlude` (or an `Occluder`, which
prepares the subset-independent work once for many batches) returns one image per subset.
Strategies: "noise" (3.4.1: each pixel a uniform random colour), "rectangle" (3.4.2: the
feature's bounding rectangle filled with noise), "pixelate" (3.4.3: the feature's pixels
noised, then every k x k block of the feature's own bounding-box grid that touches the
feature replaced by its mean) and "blur" (ours: the pixels of a Gaussian-blurred copy).
Departures: one noise image is drawn per call (seeded) and shared by all subsets, so subsets
differ only in what they occlude; the thesis drew fresh noise on every request. Pixelated
blocks take their means over the noised image, whatever the order of the features; where
blocks of two chosen features overlap, the later feature's block wins.
The metrics of thesis 3.5 live in `xai_utils.occlusion_tool`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from xai_utils.metrics import blurred

STRATEGIES = ("noise", "rectangle", "pixelate", "blur")


@dataclass
class Features:
    """Per-image label maps (0 = background, 1..n by decreasing relevance mass)."""

    labels: torch.Tensor        # B x H x W long
    relevance: torch.Tensor     # B x H x W, border zeroed, normalised to sum 1
    counts: list[int]           # number of features per image
    mass: list[torch.Tensor]    # normalised relevance per feature, per image
    sizes: list[torch.Tensor]   # pixels per feature, per image

    def masks(self, index: int = 0) -> torch.Tensor:
        """n x H x W bool masks of image `index`'s features (feature 1 first)."""
        ids = torch.arange(1, self.counts[index] + 1, device=self.labels.device)
        return self.labels[index][None] == ids[:, None, None]


def offsets(distance: float) -> list[tuple[int, int]]:
    """Pixel offsets (dy, dx) != (0, 0) with dy^2 + dx^2 <= distance^2."""
    r = int(math.floor(distance + 1e-9))
    lim = distance**2 + 1e-9
    return [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
            if (dy or dx) and dy * dy + dx * dx <= lim]


def _neighbour_max(labels: torch.Tensor, distance: float) -> torch.Tensor:
    """Max of `labels` (B x H x W float) over the disk footprint of radius `distance`:
    one horizontal max-pool per half-width, then a vertical shift per row offset."""
    r = int(math.floor(distance + 1e-9))
    if r == 0:
        return labels
    h = labels.shape[1]
    padded = F.pad(labels, (0, 0, r, r))[:, None]
    best = labels
    rows: dict[int, torch.Tensor] = {}
    for dy in range(-r, r + 1):
        half = int(math.floor(math.sqrt(max(distance**2 + 1e-9 - dy * dy, 0.0))))
        if half not in rows:
            rows[half] = F.max_pool2d(padded, (1, 2 * half + 1), 1, (0, half))[:, 0]
        best = torch.maximum(best, rows[half][:, r + dy:r + dy + h])
    return best


def connected_components(mask: torch.Tensor, distance: float = 1.5,
                         max_iter: int = 100_000) -> torch.Tensor:
    """Label map (B x H x W long) of the components of `mask` under `distance`-adjacency.

    A component's label is 1 + the largest flat pixel index it contains; 0 off the mask.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be B x H x W, got {tuple(mask.shape)}")
    b, h, w = mask.shape
    if h * w >= 2**24:
        raise ValueError("images above 16M pixels are not supported")
    mask = mask.bool()
    threads = torch.get_num_threads()
    if mask.device.type == "cpu":   # these small ops lose to thread hand-offs on a busy CPU
        torch.set_num_threads(1)
    try:
        return _propagate(mask, distance, max_iter)
    finally:
        torch.set_num_threads(threads)


def _propagate(mask: torch.Tensor, distance: float, max_iter: int) -> torch.Tensor:
    b, h, w = mask.shape
    index = torch.arange(1, h * w + 1, device=mask.device, dtype=torch.float32).view(1, h, w)
    labels = torch.where(mask, index, 0.0)
    for _ in range(max_iter):
        best = torch.where(mask, _neighbour_max(labels, distance), 0.0).view(b, -1)
        # pointer jumping: a label names a pixel of the same component; adopt its label
        for _ in range(2):
            jumped = best.gather(1, (best.long() - 1).clamp_min(0))
            best = torch.where(best > 0, torch.maximum(best, jumped), 0.0)
        best = best.view(b, h, w)
        if torch.equal(best, labels):
            return labels.long()
        labels = best
    raise RuntimeError("label propagation did not converge")


def extract(relevance: torch.Tensor, threshold=5.0, distance: float = 1.5,
            min_size=20, border: int = 5, sign: str = "positive") -> Features:
    """Features of a batch of relevance maps (B x H x W), thesis 3.3.2.

    `threshold` is x in the pixel threshold x / (H W); clusters of <= `min_size` px dropped.
    Both may also be B-long sequences (one value per map, e.g. for a parameter grid).
    """
    if relevance.dim() == 2:
        relevance = relevance[None]
    if relevance.dim() != 3:
        raise ValueError(f"relevance must be B x H x W, got {tuple(relevance.shape)}")
    if sign not in ("positive", "absolute"):
        raise ValueError(f"sign must be 'positive' or 'absolute', got {sign!r}")
    b, h, w = relevance.shape
    rel = relevance.detach().to(torch.float64 if relevance.dtype == torch.float64
                                else torch.float32).clone()
    if border > 0:
        rel[:, :border], rel[:, -border:] = 0, 0
        rel[:, :, :border], rel[:, :, -border:] = 0, 0
    total = rel.flatten(1).sum(1)
    absolute = rel.abs().flatten(1).sum(1)
    total = torch.where(total > 0, total, absolute).clamp_min(torch.finfo(rel.dtype).tiny)
    rel = rel / total[:, None, None]
    score = rel if sign == "positive" else rel.abs()
    thr = torch.as_tensor(threshold, dtype=rel.dtype, device=rel.device).reshape(-1, 1, 1)
    keep = score >= thr / (h * w)
    raw = connected_components(keep, distance)
    # size, mass and rank of every component, all images at once
    key = (torch.arange(b, device=rel.device)[:, None, None] * (h * w + 1) + raw)[keep]
    uniq, inverse = torch.unique(key, return_inverse=True)
    size = torch.bincount(inverse, minlength=len(uniq))
    mass = torch.zeros(len(uniq), dtype=rel.dtype, device=rel.device)
    mass.index_add_(0, inverse, score[keep])
    image = uniq // (h * w + 1)
    smallest = torch.as_tensor(min_size, device=rel.device).reshape(-1).expand(b)
    alive = size > smallest[image]
    order = torch.argsort(torch.where(alive, -mass, math.inf), stable=True)
    order = order[torch.argsort(image[order], stable=True)]
    rank = torch.empty_like(order)
    counts = torch.bincount(image[alive], minlength=b)
    first = torch.searchsorted(image[order], torch.arange(b, device=rel.device))
    rank[order] = torch.arange(len(order), device=rel.device) - first[image[order]]
    new = torch.where(alive, rank + 1, 0)
    labels = torch.zeros(b, h, w, dtype=torch.long, device=rel.device)
    labels[keep] = new[inverse]
    n = counts.tolist()
    ranked = [order[first[i]:first[i] + n[i]] for i in range(b)]
    return Features(labels, rel, n, [mass[o] for o in ranked], [size[o] for o in ranked])


def drop_small(labels: torch.Tensor, min_size: int) -> tuple[torch.Tensor, list[int]]:
    """Drop features of <= `min_size` px from label maps (B x H x W), keeping their order;
    returns the renumbered maps and the feature counts (cheap: no new clustering)."""
    b = labels.shape[0]
    n = int(labels.max()) + 1 if labels.numel() else 1
    offset = n * torch.arange(b, device=labels.device)[:, None]
    size = torch.bincount((labels.flatten(1) + offset).flatten(), minlength=b * n).view(b, n)
    alive = size > min_size
    alive[:, 0] = False
    new = alive.cumsum(1) * alive
    return new.gather(1, labels.flatten(1)).view_as(labels), alive.sum(1).tolist()


def subsets(n: int, max_exhaustive: int = 12, samples: int = 4096,
            seed: int = 0, device=None) -> torch.Tensor:
    """M x n bool subsets of n features: all 2^n (bit i of row m = feature i) when
    n <= `max_exhaustive`; otherwise the empty set, the full set, every single feature,
    every all-but-one set, and `samples` random subsets of uniformly drawn size."""
    if n <= max_exhaustive:
        m = torch.arange(2**n, device=device)
        return (m[:, None] >> torch.arange(n, device=device)) & 1 == 1
    eye = torch.eye(n, dtype=torch.bool, device=device)
    gen = torch.Generator().manual_seed(seed)
    size = torch.randint(0, n + 1, (samples, 1), generator=gen)
    rnd = torch.rand(samples, n, generator=gen).argsort(1).argsort(1) < size
    fixed = torch.cat([torch.zeros(1, n, dtype=torch.bool, device=device),
                       torch.ones(1, n, dtype=torch.bool, device=device), eye, ~eye])
    return torch.cat([fixed, rnd.to(fixed.device)]).unique(dim=0)


def boxes(masks: torch.Tensor) -> torch.Tensor:
    """n x 4 (top, left, bottom, right; inclusive) bounding boxes of n x H x W masks."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2), masks.any(1)
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    top = torch.where(rows, ar_h, h).amin(1)
    bottom = torch.where(rows, ar_h, -1).amax(1)
    left = torch.where(cols, ar_w, w).amin(1)
    right = torch.where(cols, ar_w, -1).amax(1)
    return torch.stack([top, left, bottom, right], 1)


def box_masks(masks: torch.Tensor) -> torch.Tensor:
    """n x H x W masks of each feature's bounding rectangle."""
    t, left, btm, right = boxes(masks).unbind(1)
    h, w = masks.shape[-2:]
    yy = torch.arange(h, device=masks.device)[None, :, None]
    xx = torch.arange(w, device=masks.device)[None, None, :]
    return ((yy >= t[:, None, None]) & (yy <= btm[:, None, None])
            & (xx >= left[:, None, None]) & (xx <= right[:, None, None]))


def block_maps(masks: torch.Tensor, k: int = 4) -> torch.Tensor:
    """n x H x W long: for each feature, the id of its k x k block (grid anchored at the
    feature's bounding-box corner, clipped to the box) where that block touches the
    feature, -1 elsewhere."""
    n, h, w = masks.shape
    t, left, btm, right = boxes(masks).unbind(1)
    yy = torch.arange(h, device=masks.device)[None, :, None]
    xx = torch.arange(w, device=masks.device)[None, None, :]
    by = (yy - t[:, None, None]).div(k, rounding_mode="floor")
    bx = (xx - left[:, None, None]).div(k, rounding_mode="floor")
    inside = box_masks(masks)
    nbx = (w + k - 1) // k + 1
    block = torch.where(inside, by * nbx + bx, -1)
    touched = torch.zeros(n, (h // k + 2) * nbx, dtype=torch.bool, device=masks.device)
    flat, fm = block.flatten(1), masks.flatten(1)
    touched[torch.arange(n, device=masks.device)[:, None].expand_as(flat)[fm], flat[fm]] = True
    hit = touched.gather(1, flat.clamp_min(0)) & (flat >= 0)
    return torch.where(hit, flat, -1).view(n, h, w)


class Occluder:
    """Occludes subsets of the features of one image (thesis 3.4), many subsets at a time.

    `x`: C x H x W; `masks`: n x H x W features; `low`, `high`: the range of the noise
    (scalars or per channel, in the model's input space); `k`: pixelisation block; `sigma`:
    blur; `blocks`: `block_maps(masks, k)` if already computed. Everything that does not
    depend on the subset (the noise, the pixels that can change, the blocks) is prepared
    once, so a batch of subsets costs only its changed pixels.
    """

    def __init__(self, x: torch.Tensor, masks: torch.Tensor, strategy: str = "noise",
                 low=0.0, high=1.0, k: int = 4, sigma: float = 5.0, seed: int = 0,
                 blocks: torch.Tensor | None = None) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose from "
                             f"{', '.join(STRATEGIES)}")
        if x.dim() != 3 or masks.dim() != 3 or masks.shape[1:] != x.shape[1:]:
            raise ValueError("x must be C x H x W and masks n x H x W of the same size")
        c, h, w = self.shape = tuple(x.shape)
        self.n, self.strategy = masks.shape[0], strategy
        masks = masks.to(x.device).bool()
        region = (box_masks(masks) if strategy == "rectangle" else masks).flatten(1)
        touched = region.any(0)
        if strategy == "pixelate":
            blocks = (block_maps(masks, k) if blocks is None else blocks).flatten(1)
            touched |= (blocks >= 0).any(0)
        self.where = touched.nonzero()[:, 0]  # the only pixels that can change
        self.region = region[:, self.where].to(x.dtype)
        if strategy == "blur":
            fill = blurred(x[None], sigma)[0]
        else:
            gen = torch.Generator(device=x.device).manual_seed(seed)
            u = torch.rand(c, h, w, generator=gen, device=x.device, dtype=x.dtype)
            lo = torch.as_tensor(low, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
            hi = torch.as_tensor(high, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
            fill = lo + (hi - lo) * u
        self.pixels = x.flatten(1).t()  # H*W x C
        self.base, self.fill = self.pixels[self.where], fill.flatten(1).t()[self.where]
        if strategy == "pixelate":  # (feature, pixel, block) of every block pixel
            blocks = blocks[:, self.where]
            self.feat, self.pix = (blocks >= 0).nonzero(as_tuple=True)
            ids = blocks[self.feat, self.pix]
            span = int(ids.max()) + 1 if len(ids) else 1
            self.block = torch.unique(self.feat * span + ids, return_inverse=True)[1]
            self.count = torch.bincount(self.block)[:, None].to(x.dtype)

    def values(self, chosen: torch.Tensor) -> torch.Tensor:
        """M x P x C: the changeable pixels (`self.where`) of each subset, occluded."""
        if chosen.dim() != 2 or chosen.shape[1] != self.n:
            raise ValueError(f"chosen must be M x {self.n}, got {tuple(chosen.shape)}")
        chosen = chosen.to(self.pixels.device).bool()
        sel = chosen.to(self.region.dtype) @ self.region > 0
        vals = torch.where(sel[:, :, None], self.fill, self.base)
        return self._pixelate(vals, chosen) if self.strategy == "pixelate" else vals

    def _pixelate(self, vals: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Every block of every chosen feature replaced by its mean, all at once. Means are
        taken over the noised pixels, so the order of the features does not matter; where
        blocks of two chosen features overlap, the later feature's block wins."""
        m, p, c = vals.shape
        if len(self.pix) == 0:
            return vals
        sums = vals.new_zeros(m, len(self.count), c)
        sums.index_add_(1, self.block, vals.index_select(1, self.pix))
        means = sums.div_(self.count).index_select(1, self.block)  # M x entries x C
        rank = chosen.index_select(1, self.feat) * (self.feat + 1)  # feature number or 0
        slot = self.pix.expand(m, -1)
        top = rank.new_zeros(m, p).scatter_reduce_(1, slot, rank, "amax")
        won = (rank > 0) & (rank == top.gather(1, slot))  # one winner per covered pixel
        filled = torch.zeros_like(vals).index_add_(1, self.pix, means * won[:, :, None])
        return torch.where((top > 0)[:, :, None], filled, vals)

    def __call__(self, chosen: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
        """One occluded copy per row of `chosen` (M x n bool) -> M x C x H x W (channels-last
        memory). `into`: an earlier result for M subsets, overwritten (its other pixels are
        the image's), which saves copying the whole image M times."""
        vals = self.values(chosen)
        c, h, w = self.shape
        if (into is None or into.shape != (len(vals), c, h, w)
                or not into.is_contiguous(memory_format=torch.channels_last)):
            into = self.pixels[None].repeat(len(vals), 1, 1).view(-1, h, w, c).permute(0, 3, 1, 2)
        into.permute(0, 2, 3, 1).view(len(vals), h * w, c).index_copy_(1, self.where, vals)
        return into


def occlude(x: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor,
            strategy: str = "noise", **params) -> torch.Tensor:
    """One occluded copy of `x` (C x H x W) per row of `chosen` (M x n bool) -> M x C x H x W;
    `params` as for `Occluder` (noise range, block size, blur, seed)."""
    return Occluder(x, masks, strategy, **params)(chosen)


def pixel_range(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (low, high) of pixel values 0 and 1 in `model`'s input space."""
    info = getattr(model, "xai", None)
    mean = torch.tensor(info.mean if info else (0.0, 0.0, 0.0))
    std = torch.tensor(info.std if info else (1.0, 1.0, 1.0))
    return (0 - mean) / std, (1 - mean) / std


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

