"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of ActNorm -> 1x1 conv ->
coupling steps with squeezes and factored-out latents.

Every prior is folded in as a `GaussianStandardize` layer, so each level hands
out standard-normal noise; the change of variables, bits/dim and sampling are
`MultiScaleFlow`'s.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from genrun.manifest import DENSITY, GENERATE

from ..multiscale import MultiScaleFlow
from .config import GlowConfig
from .layers import FlowStep, GaussianStandardize, Squeeze


class GlowLevel(nn.Module):
    """Squeeze, K flow steps, then factor out half the channels (or, at the top
    level, standardise all of them under the learned top prior)."""

    def __init__(self, in_channels: int, size: tuple[int, int], config: GlowConfig, top: bool):
        super().__init__()
        channels = in_channels * 4
        size = (size[0] // 2, size[1] // 2)
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList(
            FlowStep(channels, config.hidden, config.lu, config.coupling == "additive")
            for _ in range(config.depth)
        )
        self.top = top
        self.split = channels if top else channels // 2  # channels factored out
        cond = None if top else channels - self.split
        self.prior = GaussianStandardize(self.split, cond, size)
        self.out_channels = channels - self.split

    def forward(
        self, x: torch.Tensor, logdet: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (kept h, eps of this level, logdet)."""
        x, logdet = self.squeeze(x, logdet)
        for step in self.steps:
            x, logdet = step(x, logdet)
        z, h = x[:, : self.split], x[:, self.split :]
        eps, logdet = self.prior(z, logdet, h=None if self.top else h)
        return h, eps, logdet

    def reverse(self, h: torch.Tensor | None, eps: torch.Tensor) -> torch.Tensor:
        z, _ = self.prior(eps, reverse=True, h=h)
        x = z if self.top else torch.cat([z, h], 1)
        for step in reversed(self.steps):
            x, _ = step(x, reverse=True)
        x, _ = self.squeeze(x, reverse=True)
        return x


class Glow(MultiScaleFlow):
    family = "glow"
    roles = (GENERATE, DENSITY)
    graphs = "genexport.graphs.glow"
    label = "Glow"
    description = "Glow (Kingma & Dhariwal 2018); reports test bits/dim"
    # Measured on MNIST (benchmarks/results/glow-sweep.md): Adam at a high
    # constant rate with weight averaging beat Adamax and cosine decay.
    train_defaults: ClassVar = {
        "optimizer": "adam",
        "lr": 2e-3,
        "batch_size": 64,
        "warmup": 200,
        "clip": 50.0,
        "ema": 0.999,
        "epochs": 40,  # the digits' test bits/dim stops improving here
    }
    config_class = GlowConfig
    default_temperature = 0.7  # as in the Glow paper's samples

    def __init__(self, config: GlowConfig) -> None:
        super().__init__(config)
        self.stack_levels(config.levels, lambda c, hw, top: GlowLevel(c, hw, config, top))
