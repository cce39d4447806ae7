"""SmoothGrad (Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by
adding noise", 2017, eq. 3): the attribution averaged over copies of the input with Gaussian
noise, sigma = `noise` x the input's range (max - min, per image); `variant` "squared" averages
the squared attributions (SmoothGrad², Hooker et al. 2019) and "vargrad" takes their variance
(Adebayo et al. 2018). Any base method that returns a per-channel `extras["attribution"]`
(gradient, integrated_gradients, guided_backprop) can be smoothed; the map is the result's
maximum over colour channels of the absolute value, as the gradient's. All noisy copies of all
images run in batches of `batch_size` inputs (default: `forward_batch`).
"""

from __future__ import annotations

import torch

from xai_utils.core.model_state import forward_batch
from xai_utils.core.registry import Explanation, method_info, register

VARIANTS = ("mean", "squared", "vargrad")


def noisy_copies(x: torch.Tensor, samples: int, noise: float, seed: int) -> torch.Tensor:
    """`samples` noisy copies of each image, sample-major (S*B x C x H x W). Every image of
    the batch gets the same `samples` draws of unit noise (scaled by its own range), so an
    image's map does not depend on the batch it is explained in."""
    span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(1, -1, 1, 1, 1)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    eps = torch.randn((samples, 1, *x.shape[1:]), generator=gen, device=x.device,
                      dtype=x.dtype)
    return (x[None] + noise * span * eps).flatten(0, 1)


@register("smoothgrad", stochastic=True, probe=lambda side: {"samples": 1})
def smoothgrad(model, x: torch.Tensor, target: torch.Tensor, samples: int = 50,
               noise: float = 0.15, variant: str = "mean", base: str = "gradient",
               seed: int = 0, batch_size: int | None = None, **base_params) -> Explanation:
    """SmoothGrad of `base` (see the module docstring); extras: attribution (the mean, mean
    square or variance over the noisy copies, B x C x H x W). `base_params` go to `base`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if samples < 1 or noise < 0:
        raise ValueError(f"samples must be >= 1 and noise >= 0, got {samples}, {noise}")
    fn = method_info(base).fn
    inputs = noisy_copies(x.detach(), samples, noise, seed)
    targets = target.repeat(samples)
    size = batch_size or forward_batch(*x.shape[-2:], x.device)
    parts = []
    for start in range(0, len(inputs), size):
        out = fn(model, inputs[start:start + size], targets[start:start + size], **base_params)
        if "attribution" not in out.extras:
            raise ValueError(f"{base!r} returns no per-channel attribution to smooth")
        parts.append(out.extras["attribution"].detach())
    attr = torch.cat(parts).view(samples, *x.shape)
    mean = attr.mean(0)
    if variant == "mean":
        result = mean
    elif variant == "squared":
        result = attr.pow(2).mean(0)
    else:
        result = attr.pow(2).mean(0) - mean.pow(2)
    return Explanation(result.abs().amax(dim=1), target, extras={"attribution": result})
