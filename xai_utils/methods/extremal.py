"""Extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019, arXiv:1910.08485), batched.

The successor of meaningful perturbation replaces the L1 penalty by a hard area: for each
requested area a, find the smooth mask m with area a that maximises the target's score on
the perturbed input (the "preservation game", paper eq. 7 with the area constraint
relaxed into the ranking penalty of eq. 8):

    max_m  y_c(Phi(x; m)) - lambda * || sort(vec m) - r_a ||^2 / (H' W'),

where m is generated on the image plus a margin of `margin` px (default sigma) on every
side, H' W' = (H + 2 margin)(W + 2 margin) pixels, r_a holds a H W ones after H' W' - a H W
zeros, and lambda grows by 0.35 % per step (from 300), so the area constraint tightens as
the optimisation goes. Only the image's part of m perturbs the input. The margin matters:
a parameter at the border spreads its mask over fewer image pixels than one inside, so,
counted on the image alone, the penalty pulls it down 2x (edges) to 4x (corners) less;
these parameters then rank first and the penalty drives them to 1, leaving masks in the
corners and along the borders whatever the model. With the margin every parameter covers
the same number of pixels and pays for all of them.

- Smooth masks (paper Sec. 3.3): parameters m_bar on a grid with `step` px spacing (those
  beyond the image held at 0); every pixel takes the smooth maximum (softmax-weighted mean,
  coldness 20) of its neighbouring parameters times a flat-topped kernel
  exp(-2 max(d / sigma - 1/2, 0)^2) of their distance.
- Perturbation (blur pyramid): `levels` copies of the image blurred with sigma from
  `max_blur` down to 0; a mask value selects a level by linear interpolation (1 = image).
- Optimiser and defaults as TorchRay's reference code: SGD lr 0.01, momentum 0.9 with
  dampening 0.9, 800 steps, step 7, sigma 21, 8 levels, max blur 20, parameters
  initialised to 1 and clamped to [0, 1], a horizontal flip of the input every other step
  (its "jitter"), the reward the target logit ("simple") or logit minus the best other
  logit ("contrastive"); variants "preserve" and "delete".

Where we depart: the penalty weight grows by `growth` per step, by default 1.0035^(800 /
steps), so that it ends where TorchRay's ends after its 800 steps whatever the number of
steps (TorchRay: 1.0035 always; identical at 800 steps), and shortened runs still meet
their areas. TorchRay explains one image at a time; here all images x all areas are
optimised in one batch (the loss is a sum, SGD is element-wise, so each mask evolves as if
alone). The area a counts image pixels (TorchRay's reference has a H' W' ones, so its
masks cover about a H' W' / (H W) of the image: 0.135 for a = 0.1 at 224 px); the margin is
symmetric (TorchRay's: sigma px before the image, sigma - step + 1 after it) and nodes sit
at cell centres (TorchRay's: cell corners); the blur pads by reflection (TorchRay: zeros);
the final clamp of the mask passes gradients at exactly 0 and 1, as older PyTorch versions
did.
The saliency is the sum of the masks over the requested areas (TorchRay's benchmark
convention); with one area it is the mask itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xai_utils.core.model_state import channels_last, frozen
from xai_utils.core.ops import gaussian_blur, target_probability
from xai_utils.core.registry import Explanation, register


def clamp_unit(m: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] with the gradient kept where 0 <= m <= 1 (boundaries included)."""
    inside = (m >= 0) & (m <= 1)
    return torch.where(inside, m, m.detach().clamp(0, 1))


class SmoothMaskGenerator:
    """Parameters on a coarse grid (`step` px) -> smooth masks of size `shape`."""

    def __init__(self, shape: tuple[int, int], step: int = 7, sigma: float = 21.0,
                 coldness: float = 20.0, margin: int = 0, device=None,
                 dtype=torch.float32) -> None:
        self.shape, self.step, self.sigma, self.coldness = tuple(shape), int(step), sigma, coldness
        self.margin = int(margin)
        self.shape_in = tuple(math.ceil(s / self.step) for s in self.shape)
        self.shape_out = tuple(s + 2 * self.margin for s in self.shape)
        self.radius = 1 + math.ceil(sigma / self.step)
        # parameter cells (held at 0) beyond the image, enough to cover the margin
        self.pad = math.ceil(self.margin / self.step)
        offsets = torch.arange(-self.radius, self.radius + 1, device=device, dtype=dtype)
        axes = []
        for size in self.shape:
            pix = torch.arange(-self.margin, size + self.margin, device=device, dtype=dtype)
            cell = torch.div(pix, self.step, rounding_mode="floor")
            centre = (cell[None] + offsets[:, None]) * self.step + (self.step - 1) / 2
            axes.append(pix[None] - centre)                      # (2r + 1) x size
        dist = (axes[0][:, None, :, None] ** 2 + axes[1][None, :, None, :] ** 2).sqrt()
        z = (dist / sigma - 0.5).clamp_min(0)
        self.weight = torch.exp(-2 * z**2).flatten(0, 1)[None]   # 1 x K x H x W

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """N x 1 x h_in x w_in parameters -> N x 1 x (H + 2 margin) x (W + 2 margin) masks in
        [0, 1]: the image's pixels (`crop`) and a frame of `margin` px around them, where the
        masks of the parameters at the image's border fade out.

        The K x H x W neighbour tensors are memory-bound: on a CPU they are built a few masks
        at a time (about 4M values, one 224 px mask), so the cost grows linearly with the
        batch (8 masks: 2.4-2.7x faster than all at once); on a GPU all at once."""
        per = len(params)
        if params.device.type == "cpu":
            per = max(1, 2**22 // self.weight.numel())
        if len(params) > per:
            return torch.cat([self(params[i:i + per]) for i in range(0, len(params), per)])
        k = 2 * self.radius + 1
        near = F.unfold(params, k, padding=self.radius + self.pad)
        near = near.view(len(params), k * k, *(s + 2 * self.pad for s in self.shape_in))
        near = near.repeat_interleave(self.step, 2).repeat_interleave(self.step, 3)
        start = self.pad * self.step - self.margin
        near = near[..., start:start + self.shape_out[0], start:start + self.shape_out[1]]
        near = near * self.weight
        smooth_max = (near * (self.coldness * near).softmax(dim=1)).sum(1, keepdim=True)
        return clamp_unit(smooth_max)

    def crop(self, masks: torch.Tensor) -> torch.Tensor:
        """The image's part (N x 1 x H x W) of masks from `__call__`."""
        m = self.margin
        return masks[..., m:m + self.shape[0], m:m + self.shape[1]]


def blur_pyramid(x: torch.Tensor, levels: int = 8, max_blur: float = 20.0) -> torch.Tensor:
    """B x L x C x H x W: level l blurred with sigma max_blur (1 - l / (L - 1)); last = x."""
    sigmas = [max_blur * (1 - i / (levels - 1)) for i in range(levels)]
    return torch.stack([gaussian_blur(x, s) if s > 0 else x for s in sigmas], dim=1)


def apply_pyramid(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per pixel, interpolate between the pyramid levels that the mask value (N x 1 x H x W,
    in [0, 1]) falls between; `pyramid` is N x L x C x H x W. Mask 1 gives the image."""
    levels = pyramid.shape[1]
    pos = mask * (levels - 1)
    low = pos.detach().floor().clamp(0, levels - 2)
    frac = (pos - low)[:, None]
    idx = low.long()[:, None].expand(-1, 1, pyramid.shape[2], -1, -1)
    y0 = pyramid.gather(1, idx)[:, 0]
    y1 = pyramid.gather(1, idx + 1)[:, 0]
    frac = frac[:, 0]
    return (1 - frac) * y0 + frac * y1


def area_reference(areas, size: int, device=None, dtype=torch.float32,
                   total: int | None = None) -> torch.Tensor:
    """A x total (default: size): zeros followed by the a * size ones of the sorted ideal
    mask; with total > size the extra zeros are the margin around the image."""
    total = size if total is None else total
    ref = torch.zeros(len(areas), total, device=device, dtype=dtype)
    for i, a in enumerate(areas):
        ref[i, total - (size - int(size * (1 - a))):] = 1
    return ref


def _reward(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    score = logits.gather(1, target[:, None])[:, 0]
    if kind == "simple":
        return score
    if kind == "contrastive":
        others = logits.scatter(1, target[:, None], float("-inf")).amax(1)
        return score - others
    raise ValueError(f"unknown reward {kind!r}: simple or contrastive")


@register("extremal_perturbation", iterative=True)
def extremal_perturbation(model, x: torch.Tensor, target: torch.Tensor, areas=(0.1,),
                          steps: int = 800, step: int = 7, sigma: float = 21.0,
                          levels: int = 8, max_blur: float = 20.0, lr: float = 0.01,
                          momentum: float = 0.9, regul: float = 300.0,
                          growth: float | None = None,
                          jitter: bool = True, variant: str = "preserve",
                          reward: str = "simple", margin: int | None = None,
                          progress: bool = True) -> Explanation:
    """One mask per image and area, all optimised together; see the module docstring.

    extras: masks (B x A x H x W), areas, achieved (B x A mask means), reward / regul
    (B x A x steps curves), perturbed (B x A x C x H x W inputs the masks produce),
    prob_image, prob_perturbed (B x A, softmax of the target).
    """
    areas = [float(a) for a in ([areas] if isinstance(areas, (int, float)) else areas)]
    if not areas or any(not 0 < a <= 1 for a in areas):
        raise ValueError(f"areas must be fractions in (0, 1], got {areas}")
    if variant not in ("preserve", "delete"):
        raise ValueError(f"unknown variant {variant!r}: preserve or delete")
    b, _, h, w = x.shape
    n_a = len(areas)
    growth = 1.0035 ** (800 / steps) if growth is None else growth
    x = x.detach()
    margin = round(sigma) if margin is None else int(margin)
    gen = SmoothMaskGenerator((h, w), step, sigma, margin=margin, device=x.device,
                              dtype=x.dtype)
    pyramid = blur_pyramid(x, levels, max_blur).repeat_interleave(n_a, 0)
    tgt = target.repeat_interleave(n_a)
    ref = area_reference(areas, h * w, x.device, x.dtype,
                         total=math.prod(gen.shape_out)).repeat(b, 1)
    params = torch.ones(b * n_a, 1, *gen.shape_in, device=x.device, dtype=x.dtype,
                        requires_grad=True)
    opt = torch.optim.SGD([params], lr=lr, momentum=momentum, dampening=momentum)
    curves = torch.zeros(2, b * n_a, steps, device=x.device, dtype=x.dtype)
    weight = regul
    with frozen(model):
        for t in tqdm(range(steps), desc="extremal perturbation", disable=not progress,
                      leave=False):
            full = gen(params)
            mask = gen.crop(full)
            inp = apply_pyramid(pyramid, mask if variant == "preserve" else 1 - mask)
            if jitter and t % 2 == 0:
                inp = inp.flip(3)
            gain = _reward(model(channels_last(inp)), tgt, reward)
            if variant == "delete":
                gain = -gain
            penalty = weight * (full.flatten(1).sort(1).values - ref).pow(2).mean(1)
            opt.zero_grad()
            (penalty - gain).sum().backward()
            opt.step()
            with torch.no_grad():
                params.clamp_(0, 1)
                curves[:, :, t] = torch.stack([gain, -penalty]).detach()
            weight *= growth
    with torch.no_grad():
        mask = gen.crop(gen(params.detach()))
        perturbed = apply_pyramid(pyramid, mask if variant == "preserve" else 1 - mask)
        p_img = target_probability(model(x), target)[:, None]
        p_pert = target_probability(model(perturbed), tgt)
    masks = mask[:, 0].view(b, n_a, h, w)
    extras = {"masks": masks, "areas": areas, "achieved": masks.flatten(2).mean(2),
              "reward": curves[0].view(b, n_a, steps), "regul": curves[1].view(b, n_a, steps),
              "perturbed": perturbed.view(b, n_a, *x.shape[1:]),
              "prob_image": p_img.expand(b, n_a), "prob_perturbed": p_pert.view(b, n_a),
              "variant": variant}
    return Explanation(masks.sum(1), target, extras=extras)
