"""Small networks shared by the unit tests (float64, eval mode, seeded)."""

import torch
from torch import nn


class TinyGapNet(nn.Module):
    """conv -> ReLU -> global average pool -> linear: the smallest net every method applies to."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def two_conv_net(classes: int, seed: int) -> nn.Module:
    """conv-ReLU-max-pool-conv-ReLU, global average pool, one linear layer (float64)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes)).double().eval()

