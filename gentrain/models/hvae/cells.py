"""The towers' building blocks, as in NVAE (Vahdat & Kautz 2020): a residual
cell BN - swish - conv - BN - swish - conv - squeeze-excitation with a skip,
and the stride-2 layers between resolutions."""

from __future__ import annotations

import torch
from torch import nn

# NVAE scales each cell's residual branch by 0.1: at initialisation the towers
# are close to the identity, which keeps a deep hierarchy's KL terms tame.
RESIDUAL_SCALE = 0.1


class SqueezeExcitation(nn.Module):
    """Channel gates from the global average (Hu et al. 2018): x * sigmoid(MLP(mean x))."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        squeezed = max(channels // reduction, 4)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(),
            nn.Conv2d(squeezed, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ResidualCell(nn.Module):
    """x + 0.1 * SE(conv(swish(BN(conv(swish(BN(x))))))), same shape in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            SqueezeExcitation(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.branch(x)


def cell_stack(channels: int, cells: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualCell(channels) for _ in range(cells)))


def downsample(channels: int) -> nn.Module:
    """Halves both sides exactly on the even sizes `conv_stages` allows (28 -> 14 -> 7)."""
    return nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, stride=2, padding=1))


def upsample(channels_in: int, channels_out: int) -> nn.Module:
    """Doubles both sides (7 -> 14 -> 28), the inverse of `downsample`'s sizes."""
    return nn.Sequential(
        nn.SiLU(), nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1)
    )
