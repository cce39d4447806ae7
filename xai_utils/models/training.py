"""The one training loop of the package: Adam with a one-cycle learning-rate schedule (Smith
& Topin, "Super-Convergence", 2019) on a stream of fresh batches, for the small nets of the
generated tasks (`shapes_vgg`, the NBDT figures net)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from tqdm.auto import tqdm

from xai_utils.core.model_state import model_device, single_threaded


def fit(model: nn.Module, steps: int, lr: float,
        batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], desc: str = "training",
        single_thread: bool = False) -> None:
    """Train `model` in place for `steps` steps; `batches(step)` gives (images, labels).

    `single_thread`: one intra-op thread on a CPU (faster for tiny nets on a busy CPU).
    Leaves the model in training mode; the caller switches to eval."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    with single_threaded(model_device(model)) if single_thread else nullcontext():
        for step in tqdm(range(steps), desc=desc, mininterval=5):
            images, labels = batches(step)
            loss = loss_fn(model(images), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
