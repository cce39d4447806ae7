"""Fixtures of the unit tests: the shared small networks (tiny_nets.py)."""

import pytest
import torch
from tiny_nets import TinyGapNet
from torch import nn


@pytest.fixture
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyGapNet().double().eval()
