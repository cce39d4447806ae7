import os

import pytest
import torch

os.environ.setdefault("XAI_DEVICE", "cpu")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def effnet():
    import xai_utils as xu

    return xu.load_model("efficientnet_lite0")


@pytest.fixture(scope="session")
def shapes_model():
    import xai_utils as xu

    return xu.load_model("shapes_vgg")
