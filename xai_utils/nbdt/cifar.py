"""The NBDT of the tutorial "How To Visualize and Interpret Neural Networks in Python":
CIFAR-10, WideResNet-28-10, pretrained with the tree.

Online only: the checkpoint (the network fine-tuned with nbdt's soft tree-supervision loss on
its induced hierarchy) comes from the nbdt project's GitHub release. The architecture comes
from pytorchcv (an nbdt dependency), the hierarchy and rules from the nbdt package; offline,
`load_cifar10_nbdt` raises a ConnectionError that names the download and where to put it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ARCH, DATASET = "wrn28_10_cifar10", "CIFAR10"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the tutorial's normalisation
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def checkpoint_url() -> str:
    from nbdt.model import model_urls

    return model_urls[(ARCH, DATASET)]


def checkpoint_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / checkpoint_url().rsplit("/", 1)[1]


def load_cifar10_nbdt(hard: bool = True, device: torch.device | str | None = None):
    """nbdt's HardNBDT (or SoftNBDT) around the pretrained wrn28_10_cifar10, as in the tutorial.

    Downloads the checkpoint on first use into torch hub's cache; raises ConnectionError
    naming the URL when it cannot.
    """
    from nbdt.model import HardNBDT, SoftNBDT
    from pytorchcv.models.wrn_cifar import wrn28_10_cifar10

    from xai_utils.core.inputs import device as default_device
    from xai_utils.nbdt.hierarchy import nbdt_patched

    path = checkpoint_path()
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(checkpoint_url(), str(path), progress=False)
        except OSError as err:  # URLError, socket errors, HTTP errors are OSErrors
            raise ConnectionError(
                f"The tutorial's pretrained CIFAR-10 NBDT needs the download {checkpoint_url()} "
                f"(no connection: {err}). Download it by hand into {path}, or use the offline "
                "induced tree of efficientnet_lite0 (MODEL='efficientnet_lite0').") from err
    state = torch.load(path, map_location="cpu", weights_only=True)
    Rules = HardNBDT if hard else SoftNBDT
    with nbdt_patched():
        nbdt = Rules(dataset=DATASET, arch=ARCH, model=wrn28_10_cifar10())
    nbdt.load_state_dict(state)
    return nbdt.eval().to(device or default_device())


def cifar10_preprocess(images, device=None) -> torch.Tensor:
    """The tutorial's transform: resize the short side to 32, centre-crop 32, normalise."""
    from PIL import Image

    batch = []
    for img in images:
        pil = Image.fromarray(np.asarray(img, dtype=np.uint8))
        w, h = pil.size
        s = 32 / min(w, h)
        pil = pil.resize((max(32, round(w * s)), max(32, round(h * s))), Image.BILINEAR)
        w, h = pil.size
        left, top = (w - 32) // 2, (h - 32) // 2
        arr = np.asarray(pil.crop((left, top, left + 32, top + 32)), dtype=np.float32) / 255
        batch.append(torch.from_numpy(arr).permute(2, 0, 1))
    x = torch.stack(batch)
    x = (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]
    return x.to(device or "cpu")
