"""Feature occlusion (Dowling 2018, "Deep Introspection", MEng thesis, ch. 3.4).

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
"""

from __future__ import annotations

import torch

from xai_utils.core.inputs import input_spec
from xai_utils.core.ops import bounding_boxes, gaussian_blur

STRATEGIES = ("noise", "rectangle", "pixelate", "blur")


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

def box_masks(masks: torch.Tensor) -> torch.Tensor:
    """n x H x W masks of each feature's bounding rectangle."""
    t, left, btm, right = bounding_boxes(masks).unbind(1)
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
    t, left, btm, right = bounding_boxes(masks).unbind(1)
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
            fill = gaussian_blur(x[None], sigma)[0]
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
    """Per-channel (low, high) model inputs of pixel values 0 and 1: the noise range."""
    spec = input_spec(model)
    return spec.low.flatten(), spec.high.flatten()
