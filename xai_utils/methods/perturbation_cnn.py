"""Perturbation CNN: a tiny convolutional generator learns the perturbation that kills a class.

The write-up "Deep Explanation: Using AI for Explaining the Results of AI" (a VGG19 notebook
building on Fong & Vedaldi 2017, arXiv 1704.03296). For an input x and its class c, a
generator G made of ONE `Conv2d(3, 3, k, padding=k//2)` is applied `nblocks x nlayers` times
with shared weights, a ReLU after each block, and its output is min-max rescaled to the
input's own range [min x, max x]. Adam trains G's 3*3*k*k + 3 numbers to minimise

    L(G) = softmax(f(G(x)))_c + l1_coeff * mean |x - G(x)|                          (1)

(lr 0.01, 1000 steps, l1_coeff 1, nblocks 2-3, nlayers 3, k 3). The explanation is the
post-processed difference: channel means of x and G(x), d = |mean x - mean G(x)|^6, a 10 %
band at every edge set to zero (padding artefacts), a grey dilation with a 20 x 20 square,
and the centre of mass of d.

Batching: every image gets its own generator, and all of them run as ONE grouped convolution
(weights B*3 x 3 x k x k, groups=B, over a 1 x 3B x H x W tensor). The batch loss is the sum
of the per-image losses (1), so each generator's gradient is that of its own image, and Adam
works elementwise: the batch gives the same result as B separate runs from the same seed.

Where we depart from the seed (all deliberate):
- the input is in the model's own RGB preprocessing (the seed flips RGB to BGR and then
  feeds an RGB-trained VGG19);
- the centre of mass is returned as (row, col) and must be plotted at x = col, y = row (the
  seed computes it on a row-flipped map and passes (row, col) where matplotlib wants (x, y));
- the difference is |.|^power (identical to the seed's (.)^6 for even powers), so odd powers
  chosen on a slider still give a non-negative map;
- an even kernel size is an error (the seed silently adds 1);
- every generator starts from the same initial weights, drawn from `seed` with PyTorch's
  default Conv2d initialisation (uniform in +-1/sqrt(3 k^2)), so results do not depend on
  the batch an image is in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xai_utils.core.model_state import channels_last
from xai_utils.core.ops import target_probability
from xai_utils.core.registry import Explanation, register


def init_generator(batch: int, kernel_size: int = 3, seed: int = 0, device=None,
                   dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (B x 3 x 3 x k x k) and biases (B x 3) of B identical fresh generators.

    Drawn on the CPU from `seed` like `nn.Conv2d`'s default initialisation, then moved.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(3 * kernel_size * kernel_size)
    weight = (torch.rand(3, 3, kernel_size, kernel_size, generator=gen, dtype=torch.float64)
              * 2 - 1) * bound
    bias = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    weight = weight.to(device=device, dtype=dtype).expand(batch, -1, -1, -1, -1)
    bias = bias.to(device=device, dtype=dtype).expand(batch, -1)
    return weight.contiguous(), bias.contiguous()


def rescale_to(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each image of `y` to the global range [min x_b, max x_b] of `x`."""
    lo_x = x.flatten(1).amin(1).view(-1, 1, 1, 1)
    range_x = x.flatten(1).amax(1).view(-1, 1, 1, 1) - lo_x
    lo_y = y.flatten(1).amin(1).view(-1, 1, 1, 1)
    range_y = y.flatten(1).amax(1).view(-1, 1, 1, 1) - lo_y
    return (y - lo_y) / range_y.clamp_min(torch.finfo(y.dtype).tiny) * range_x + lo_x


def generate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, nblocks: int = 3,
             nlayers: int = 3) -> torch.Tensor:
    """The perturbed batch G_b(x_b) for every image at once (one grouped convolution).

    Computed and returned in channels-last memory order: on a CPU both the grouped
    convolution and the classifier that reads the result run faster in it."""
    b, c, h, w = x.shape
    if c != 3 or weight.shape[:3] != (b, 3, 3):
        raise ValueError(f"need a B x 3 x H x W batch and B x 3 x 3 x k x k weights, got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    k = weight.shape[-1]
    kernel, offset = weight.reshape(3 * b, 3, k, k), bias.reshape(3 * b)
    y = channels_last(x.reshape(1, 3 * b, h, w))
    for _ in range(nblocks):
        for _ in range(nlayers):
            y = F.conv2d(y, kernel, offset, padding=k // 2, groups=b)
        y = F.relu(y)
    return channels_last(rescale_to(y.reshape(b, 3, h, w), x))


def dilate(maps: torch.Tensor, size: int = 20) -> torch.Tensor:
    """Grey dilation of B x H x W maps with a size x size square (max filter).

    The window of pixel i spans i - (size-1)//2 .. i + size//2 in each direction, the
    convention of scipy.ndimage.grey_dilation and skimage.morphology.dilation for even
    sizes; outside the image counts as -inf (equal to their reflect mode for a max filter).
    """
    if size <= 1:
        return maps
    before, after = (size - 1) // 2, size // 2
    padded = F.pad(maps[:, None], (before, after, before, after), value=-math.inf)
    return F.max_pool2d(padded, size, stride=1)[:, 0]


def postprocess(x: torch.Tensor, x_pert: torch.Tensor, power: float = 6.0,
                border: float = 0.1, dilation: int = 20) -> torch.Tensor:
    """The seed's difference map, B x H x W: |mean_c x - mean_c x_pert|^power, zero in a
    `border` fraction at every edge, dilated with a `dilation` x `dilation` square."""
    diff = (x.mean(1) - x_pert.mean(1)).abs().pow(power)
    h, w = diff.shape[-2:]
    keep = torch.zeros(h, w, dtype=torch.bool, device=diff.device)
    keep[int(border * h):int((1 - border) * h), int(border * w):int((1 - border) * w)] = True
    return dilate(diff * keep, dilation)


def center_of_mass(maps: torch.Tensor) -> torch.Tensor:
    """B x 2 (row, col) centres of mass of non-negative maps (plot at x = col, y = row)."""
    _, h, w = maps.shape
    total = maps.flatten(1).sum(1).clamp_min(torch.finfo(maps.dtype).tiny)
    rows = torch.arange(h, device=maps.device, dtype=maps.dtype)
    cols = torch.arange(w, device=maps.device, dtype=maps.dtype)
    return torch.stack([(maps.sum(2) * rows).sum(1) / total,
                        (maps.sum(1) * cols).sum(1) / total], dim=1)


def _target_prob(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return target_probability(model(x), target)


def optimize(model, x: torch.Tensor, target: torch.Tensor, steps: int = 1000,
             lr: float = 0.01, l1_coeff: float | Sequence[float] | torch.Tensor = 1.0,
             kernel_size: int = 3, nblocks: int = 3, nlayers: int = 3, seed: int = 0,
             snapshots: Sequence[int] = (), progress: bool = True) -> dict:
    """Train one generator per image for `steps` Adam steps on loss (1), all in one batch.

    `l1_coeff` is one number or one per image (the same image repeated with several
    weights is a cheap sweep). Returns the final perturbed batch, the B x steps curves of
    the loss, the target probability and the distance mean |x - G(x)| (each measured on the
    input of that step), and the perturbed batch of each step listed in `snapshots`.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x = x.detach()
    b = x.shape[0]
    l1 = torch.as_tensor(l1_coeff, dtype=x.dtype, device=x.device).reshape(-1)
    if l1.numel() not in (1, b):
        raise ValueError(f"l1_coeff needs 1 or {b} values, got {l1.numel()}")
    l1 = l1.expand(b)
    weight, bias = init_generator(b, kernel_size, seed, x.device, x.dtype)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    losses = torch.empty(b, steps, device=x.device, dtype=x.dtype)
    probs, dists = torch.empty_like(losses), torch.empty_like(losses)
    saved: dict[int, torch.Tensor] = {}
    wanted = set(snapshots)
    for step in tqdm(range(steps), desc="perturbation CNN", disable=not progress):
        x_pert = generate(x, weight, bias, nblocks, nlayers)
        prob = _target_prob(model, x_pert, target)
        dist = (x - x_pert).abs().flatten(1).mean(1)
        loss = prob + l1 * dist
        weight.grad, bias.grad = torch.autograd.grad(loss.sum(), [weight, bias])
        opt.step()
        losses[:, step] = loss.detach()
        probs[:, step] = prob.detach()
        dists[:, step] = dist.detach()
        if step + 1 in wanted:  # the input that produced this step's loss
            saved[step + 1] = x_pert.detach()
    with torch.no_grad():
        x_pert = generate(x, weight, bias, nblocks, nlayers)
        prob_after = _target_prob(model, x_pert, target)
    return {"perturbed": x_pert, "losses": losses, "probs": probs, "dists": dists,
            "prob_after": prob_after,
            "snapshots": saved, "weight": weight.detach(), "bias": bias.detach()}


@register("perturbation_cnn", iterative=True, stochastic=True)
def perturbation_cnn(model, x: torch.Tensor, target: torch.Tensor, steps: int = 1000,
                     lr: float = 0.01, l1_coeff: float | Sequence[float] = 1.0,
                     kernel_size: int = 3, nblocks: int = 3, nlayers: int = 3,
                     power: float = 6.0, border: float = 0.1, dilation: int = 20,
                     seed: int = 0, snapshots: Sequence[int] = (),
                     progress: bool = True) -> Explanation:
    """The "Deep Explanation" perturbation CNN for a batch: saliency = the post-processed
    difference.

    extras: `perturbed` (B x 3 x H x W, the final G(x)), `losses`, `probs`, `dists`
    (B x steps),
    `prob_before` / `prob_after` (B), `l1` (B, mean |x - G(x)|), `center_of_mass`
    (B x 2, row and col), `snapshots` ({step: perturbed batch}).
    """
    with torch.no_grad():
        prob_before = _target_prob(model, x, target)
    run = optimize(model, x, target, steps, lr, l1_coeff, kernel_size, nblocks, nlayers,
                   seed, snapshots, progress)
    x_pert = run["perturbed"]
    saliency = postprocess(x, x_pert, power, border, dilation)
    extras = {**run, "prob_before": prob_before,
              "l1": (x - x_pert).abs().flatten(1).mean(1),
              "center_of_mass": center_of_mass(saliency)}
    return Explanation(saliency, target, extras=extras)


CHANNELS = ("red", "green", "blue")


def image_kind(rgb: torch.Tensor, tol: float = 0.02) -> list[str]:
    """Plain words for degenerate G(x): B x H x W x 3 images in [0, 1] -> "black" (every
    channel's 99th percentile below `tol`), "near-constant" (pixel std below `tol`), "<c>
    only" / "no <c>" (the other channels, or that one, empty), else "full colour"."""
    rgb = torch.as_tensor(rgb).float().flatten(1, 2)              # B x HW x 3
    empty = rgb.quantile(0.99, dim=1) < tol                       # B x 3
    flat = rgb.std(1).amax(1) < tol
    kinds = []
    for e, f in zip(empty.tolist(), flat.tolist(), strict=True):
        if all(e):
            kinds.append("black")
        elif f:
            kinds.append("near-constant")
        elif sum(e) == 2:
            kinds.append(f"{CHANNELS[e.index(False)]} only")
        elif sum(e) == 1:
            kinds.append(f"no {CHANNELS[e.index(True)]}")
        else:
            kinds.append("full colour")
    return kinds


def _ranks(v: torch.Tensor) -> torch.Tensor:
    return v.argsort(1).argsort(1).to(torch.float64)


def brightness_correlation(x: torch.Tensor, x_pert: torch.Tensor,
                           border: float = 0.1) -> torch.Tensor:
    """Per image, Spearman's rank correlation between the change |mean_c x - mean_c G(x)| and
    the photo's brightness mean_c x inside the border band: near 1 when the map (a monotone
    function of the change before dilation) simply follows how bright the photo is."""
    h, w = x.shape[-2:]
    rows, cols = slice(int(border * h), int((1 - border) * h)), slice(int(border * w),
                                                                     int((1 - border) * w))
    bright = x.mean(1)[:, rows, cols].flatten(1)
    change = (x.mean(1) - x_pert.mean(1)).abs()[:, rows, cols].flatten(1)
    a, b = _ranks(change), _ranks(bright)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)
