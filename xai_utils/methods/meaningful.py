"""Meaningful perturbation (Fong & Vedaldi, ICCV 2017, arXiv:1704.03296), batched.

A low-resolution mask m (1 = keep) is upsampled to the input and blends the image x0 with a
perturbed copy ("null image") of it (the paper's eq. 3 with a fixed blur, as its code does):

    Phi(x0; m) = x0 * M + null * (1 - M),      M = upsample_mask(m)

and m minimises (paper eq. 4 / 5)

    lambda1 * L1(1 - m) + lambda2 * TV_beta(m) + softmax(f(Phi(x0(. - tau); m) + noise))_c

with Adam, m clamped to [0, 1] after every step. Two presets (the
paper's is the default: on EfficientNet-Lite0 the port's median-blur null image keeps much of
the class even when it replaces the whole picture, a high floor for deletion; masks that end
below it are tested by `mask_controls`):

- ``preset="port"``: the PyTorch port of the paper: 28 x 28 mask, bilinear
  upsampling (align_corners=True), null image = median blur 11 (what the port's code
  optimises; ``blur="median+gaussian"`` is its README's average of the median and a
  Gaussian 11 x 11, sigma 5), noise N(0, 0.2^2) added every step, 0.01 * mean|1 - m|,
  0.2 * (mean|d_row|^3 + mean|d_col|^3), Adam lr 0.1, 500 steps.
- ``preset="paper"``: the authors' own settings: 300 Adam steps, lr 0.1, 1e-4 * sum|m - 1|,
  1e-2 * isotropic TV sum_u |grad m(u)|^3, 28 x 28 mask upsampled x8 (to the input) then
  Gaussian-blurred with sigma 5, random translation (jitter) of up to 4 px, null image a
  Gaussian blur with sigma 10.

Where we depart: both presets score the softmax probability of the target; the blurs act on
the model's (normalised) input, which equals blurring the photo because the median commutes
with the per-channel increasing affine normalisation and the Gaussian is linear; `noise` is
a std in ImageNet-normalised units, as in the port (0.2 there = 0.045 in [0, 1] pixels), and
is rescaled to the model's own normalisation (0.09 for efficientnet_lite0's std of 0.5;
taken as is for a model without preprocessing info); jitter pads by edge replication
instead of cropping a larger image. The random noise and jitter of each step are shared by
all images of a batch, so a batch reproduces single-image runs with the same seed, and the
loss is a sum over images, so Adam (element-wise) optimises every mask independently.
The saliency is 1 - M (higher = more important) at input resolution.

`mask_controls` tests a mask that goes below its null image's floor (rounded, turned masks).
`deletion_game` is the paper's Sec. 5 score: the smallest box, from thresholding a saliency
map, whose blurring drops the normalised target score to <= 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xai_utils.core.inputs import IMAGENET_STD, model_info
from xai_utils.core.model_state import channels_last, frozen
from xai_utils.core.ops import (
    bounding_boxes,
    gaussian_blur,
    minmax,
    target_probability,
    total_variation,
)
from xai_utils.core.registry import Explanation, register


@dataclass(frozen=True)
class Preset:
    """All settings of one meaningful-perturbation run (see the module docstring)."""

    steps: int
    lr: float
    l1: float
    l1_reduce: str          # "mean" (port) or "sum" (paper)
    tv: float
    beta: float
    tv_kind: str            # "anisotropic_mean" (port) or "isotropic_sum" (paper)
    mask_size: int
    mask_blur: float        # sigma of the Gaussian applied after upsampling (0 = none)
    blur: str               # null image: "median", "median+gaussian", "gaussian"
    blur_size: int          # median / Gaussian window (port)
    blur_sigma: float       # Gaussian sigma of the null image
    noise: float
    jitter: int


PRESETS = {
    "port": Preset(steps=500, lr=0.1, l1=0.01, l1_reduce="mean", tv=0.2, beta=3.0,
                   tv_kind="anisotropic_mean", mask_size=28, mask_blur=0.0, blur="median",
                   blur_size=11, blur_sigma=5.0, noise=0.2, jitter=0),
    "paper": Preset(steps=300, lr=0.1, l1=1e-4, l1_reduce="sum", tv=1e-2, beta=3.0,
                    tv_kind="isotropic_sum", mask_size=28, mask_blur=5.0, blur="gaussian",
                    blur_size=0, blur_sigma=10.0, noise=0.0, jitter=4),
}


def resolve_preset(preset: str | Preset = "paper", **overrides) -> Preset:
    """A preset by name, with any field overridden (None values are ignored)."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    fields = set(Preset.__dataclass_fields__)
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown meaningful_perturbation parameter(s) {sorted(unknown)}; "
                        f"settable: {sorted(fields)}")
    return replace(preset, **{k: v for k, v in overrides.items() if v is not None})


def median_blur(x: torch.Tensor, size: int = 11, chunk: int = 1) -> torch.Tensor:
    """Per-channel median over a size x size window, replicate padding (OpenCV's border)."""
    r = size // 2
    out = torch.empty_like(x)
    for i in range(0, len(x), chunk):
        part = F.pad(x[i:i + chunk], (r, r, r, r), mode="replicate")
        win = part.unfold(2, size, 1).unfold(3, size, 1)          # b c h w k k
        out[i:i + chunk] = win.flatten(-2).median(dim=-1).values
    return out


def null_image(x: torch.Tensor, p: Preset) -> torch.Tensor:
    """The perturbed copy the mask blends towards."""
    if p.blur == "gaussian":
        return gaussian_blur(x, p.blur_sigma)
    med = median_blur(x, p.blur_size)
    if p.blur == "median":
        return med
    if p.blur == "median+gaussian":
        gauss = gaussian_blur(x, p.blur_sigma, radius=p.blur_size // 2)  # OpenCV's window
        return 0.5 * (med + gauss)
    raise ValueError(f"unknown blur {p.blur!r}: median, median+gaussian or gaussian")


def upsample_mask(mask: torch.Tensor, size: tuple[int, int], p: Preset) -> torch.Tensor:
    """Low-res mask (B x 1 x h x w) -> mask at input resolution, in [0, 1].

    Interpolation and blur are linear with weights summing to one, so we upsample the deletion
    1 - m and subtract: a mask of exactly 1 stays exactly 1. No clamp: values stay in [0, 1]
    up to rounding, and a clamp would zero the gradient of a mask sitting at 1.
    """
    gone = F.interpolate(1 - mask, size=size, mode="bilinear", align_corners=True)
    if p.mask_blur > 0:
        gone = gaussian_blur(gone, p.mask_blur)
    return 1 - gone


def blend(x: torch.Tensor, null: torch.Tensor, mask_up: torch.Tensor) -> torch.Tensor:
    """x * M + null * (1 - M), written so that M = 1 returns x bit for bit."""
    return x + (1 - mask_up) * (null - x)


def regularizers(mask: torch.Tensor, p: Preset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image L1 of (1 - m) and TV_beta of the low-res mask, as the preset defines them."""
    gone = (1 - mask).abs().flatten(1)
    l1 = gone.mean(1) if p.l1_reduce == "mean" else gone.sum(1)
    if p.tv_kind == "anisotropic_mean":
        tv = total_variation(mask[:, 0], p.beta)
    else:
        dy = mask[..., 1:, :-1] - mask[..., :-1, :-1]
        dx = mask[..., :-1, 1:] - mask[..., :-1, :-1]
        tv = (dy**2 + dx**2).pow(p.beta / 2).flatten(1).sum(1)
    return l1, tv


def _shift(x: torch.Tensor, dy: int, dx: int, jitter: int) -> torch.Tensor:
    """Translate by (dy, dx) in [-jitter, jitter], edges replicated."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (jitter,) * 4, mode="replicate")
    return padded[..., jitter - dy:jitter - dy + h, jitter - dx:jitter - dx + w]




def _imagenet_to_model_units(model, x: torch.Tensor) -> torch.Tensor:
    """Per-channel factor (1 x C x 1 x 1) turning a std in ImageNet-normalised units into
    the model's input units; 1 when the model carries no preprocessing info."""
    info = model_info(model)
    if len(info.std) != x.shape[1]:
        return torch.ones(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
    scale = [s / t for s, t in zip(IMAGENET_STD, info.std, strict=True)]
    return torch.tensor(scale, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)


@torch.no_grad()
def _probability(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return target_probability(model(x), target)


@register("meaningful_perturbation", iterative=True, stochastic=True, options=Preset)
def meaningful_perturbation(model, x: torch.Tensor, target: torch.Tensor,
                            preset: str | Preset = "paper", seed: int = 0,
                            progress: bool = True, snapshots=(), **overrides) -> Explanation:
    """Optimise one mask per image of the batch at once; see the module docstring.

    `overrides` set any `Preset` field (steps, lr, l1, tv, beta, noise, jitter, blur, ...);
    l1 and tv may also be B-long tensors (one weight per image, e.g. a grid for a slider).
    `snapshots`: step counts after which the saliency is kept (extras["snapshots"]: S x B x
    H x W), so a slider can show the optimisation without rerunning it.
    extras: mask (B x 1 x h x w), mask_up (B x H x W), perturbed (the blended input without
    noise or jitter), null, loss / l1 / tv / prob (B x steps curves), prob_before,
    prob_after, preset.
    """
    p = resolve_preset(preset, **overrides)
    b, _, h, w = x.shape
    x = x.detach()
    null = null_image(x, p)
    noise_std = p.noise * _imagenet_to_model_units(model, x)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    shifts = torch.randint(-p.jitter, p.jitter + 1, (p.steps, 2),
                           generator=torch.Generator().manual_seed(seed)).tolist()
    mask = torch.ones(b, 1, p.mask_size, p.mask_size, device=x.device, dtype=x.dtype,
                      requires_grad=True)
    opt = torch.optim.Adam([mask], lr=p.lr)
    curves = torch.zeros(4, b, p.steps, device=x.device, dtype=x.dtype)
    snaps = []
    with frozen(model):
        for step in tqdm(range(p.steps), desc="meaningful perturbation", disable=not progress,
                         leave=False):
            inp = blend(x, null, upsample_mask(mask, (h, w), p))
            if p.jitter:
                inp = _shift(inp, *shifts[step], p.jitter)
            if p.noise:
                inp = inp + noise_std * torch.randn((1, *x.shape[1:]), generator=gen,
                                                  device=x.device, dtype=x.dtype)
            prob = target_probability(model(channels_last(inp)), target)
            l1, tv = regularizers(mask, p)
            loss = p.l1 * l1 + p.tv * tv + prob
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                mask.clamp_(0, 1)
                curves[:, :, step] = torch.stack([loss, l1, tv, prob]).detach()
                if step + 1 in snapshots:
                    snaps.append(1 - upsample_mask(mask, (h, w), p).clamp(0, 1)[:, 0])
    mask = mask.detach()
    mask_up = upsample_mask(mask, (h, w), p).clamp(0, 1)
    perturbed = blend(x, null, mask_up)
    extras = {"mask": mask, "mask_up": mask_up[:, 0], "perturbed": perturbed, "null": null,
              "loss": curves[0], "l1": curves[1], "tv": curves[2], "prob": curves[3],
              "prob_before": _probability(model, x, target),
              "prob_after": _probability(model, perturbed, target), "preset": p,
              "snapshots": torch.stack(snaps) if snaps else None}
    return Explanation(1 - mask_up[:, 0], target, extras=extras)


@dataclass
class MaskControls:
    """Per image: `ratios` maps a name to p_c(input) / p_c(image) for the optimised mask, the
    null image (the floor), the mask rounded to 0 / 1 and the mask turned by 180 degrees;
    `top_class` is the perturbed input's top class; `difference` = |perturbed - null| summed
    over channels (B x H x W), the detail the mask keeps; `rotated` the turned mask's input."""

    ratios: dict[str, torch.Tensor]
    top_class: torch.Tensor
    difference: torch.Tensor
    rotated: torch.Tensor


@torch.no_grad()
def mask_controls(model, x: torch.Tensor, expl: Explanation) -> MaskControls:
    """Controls for a mask that drops the class below its null image's floor (no noise or
    jitter): does it need in-between blends (rounded mask), its places (turned mask)?"""
    e, target = expl.extras, expl.target
    p, null, size = e["preset"], e["null"], x.shape[-2:]
    binary = (e["mask"] > 0.5).to(x.dtype)
    inputs = {"optimised": e["perturbed"], "null image": null,
              "rounded to 0/1": blend(x, null, upsample_mask(binary, size, p)),
              "turned 180°": blend(x, null, upsample_mask(e["mask"].flip(2, 3), size, p))}
    ratios = {k: _probability(model, v, target) / e["prob_before"] for k, v in inputs.items()}
    return MaskControls(ratios, model(e["perturbed"]).argmax(1),
                        (e["perturbed"] - null).abs().sum(1), inputs["turned 180°"])


@dataclass
class DeletionGame:
    """Per image: the smallest box (y0, x0, y1, x1 inclusive) found, its area in pixels,
    whether a box smaller than the image reached the goal (else the whole image counts), and
    the normalised score of the box kept; `floor` is the score with the whole image blurred,
    the lowest any box can reach."""

    box: torch.Tensor
    area: torch.Tensor
    success: torch.Tensor
    score: torch.Tensor
    floor: torch.Tensor


@torch.no_grad()
def deletion_game(model, x: torch.Tensor, saliency: torch.Tensor, target: torch.Tensor,
                  thresholds=None, sigma: float = 10.0, goal: float = 0.01,
                  batch_size: int = 32) -> DeletionGame:
    """Fong & Vedaldi 2017, Sec. 5: threshold each min-max-normalised map at alpha in
    0, 0.05, ..., 0.95, take the tightest box around {s >= alpha}, blur inside the box
    (Gaussian, sigma 10) and keep the smallest box whose normalised score
    p_c(blurred box) / p_c(x) is <= `goal`. A box covering the whole image (alpha = 0 always
    gives one) is not a success: it says only that blurring everything deletes the class.
    All B x T candidates run in batches."""
    b, _, h, w = x.shape
    if thresholds is None:
        thresholds = torch.arange(20, device=x.device, dtype=x.dtype) * 0.05
    alpha = torch.as_tensor(thresholds, device=x.device, dtype=x.dtype)
    sal = minmax(saliency).view(b, 1, h, w)
    region = sal >= alpha.view(1, -1, 1, 1)                               # B x T x H x W
    box = bounding_boxes(region.flatten(0, 1)).view(b, -1, 4)              # B x T x 4
    y0, x0, y1, x1 = box.unbind(-1)
    ar_h, ar_w = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    area = ((y1 - y0 + 1).clamp_min(0) * (x1 - x0 + 1).clamp_min(0))
    base = _probability(model, x, target)
    soft = gaussian_blur(x, sigma)
    t = alpha.numel()
    score = torch.empty(b, t, device=x.device, dtype=x.dtype)
    pairs = torch.stack(torch.meshgrid(torch.arange(b, device=x.device),
                                       torch.arange(t, device=x.device), indexing="ij"), -1)
    pairs = pairs.view(-1, 2)
    for i in range(0, len(pairs), batch_size):
        img, th = pairs[i:i + batch_size].unbind(1)
        bx = box[img, th]
        inside = ((ar_h.view(1, h, 1) >= bx[:, 0, None, None])
                  & (ar_h.view(1, h, 1) <= bx[:, 2, None, None])
                  & (ar_w.view(1, 1, w) >= bx[:, 1, None, None])
                  & (ar_w.view(1, 1, w) <= bx[:, 3, None, None]))[:, None]
        inp = torch.where(inside, soft[img], x[img])
        score[img, th] = _probability(model, inp, target[img]) / base[img]
    ok = (score <= goal) & (area < h * w)
    cost = torch.where(ok, area, h * w + 1)
    best = cost.argmin(1)
    pick = torch.arange(b, device=x.device)
    success = ok.any(1)
    full = torch.tensor([0, 0, h - 1, w - 1], device=x.device)
    return DeletionGame(box=torch.where(success[:, None], box[pick, best], full),
                        area=torch.where(success, area[pick, best], h * w),
                        success=success, score=score[pick, best],
                        floor=_probability(model, soft, target) / base)
