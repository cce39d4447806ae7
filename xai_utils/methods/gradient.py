"""The vanilla gradient (`explain("gradient", ...)`): the saliency of Simonyan, Vedaldi &
Zisserman, "Deep Inside Convolutional Networks", ICLR workshop 2014, the max over colour
channels of |d y_c / d x|.
"""

from __future__ import annotations

import torch

from xai_utils.core.registry import Explanation, register


@register("gradient")
def gradient(model, x: torch.Tensor, target: torch.Tensor) -> Explanation:
    """Simonyan et al. 2014, eq. (2): one backward pass for the whole batch."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    score = logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(score, x)
    return Explanation(grad.abs().amax(dim=1), target,
                       extras={"logits": logits.detach(), "attribution": grad})
