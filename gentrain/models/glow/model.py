"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of ActNorm -> 1x1 conv ->
coupling steps with squeezes and factored-out latents.

Every prior is folded in as a `GaussianStandardize` layer, so each level hands
out standard-normal noise; the change of variables, bits/dim and sampling are
`MultiScaleFlow`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import nn

from genrun.manifest import DENSITY, GENERATE

from ..multiscale import FlowLevel, MultiScaleFlow
from ..transforms import Transform
from .config import GlowConfig
from .layers import FlowStep, GaussianStandardize, Squeeze


class GlowLevel(FlowLevel):
    """Squeeze, K flow steps, then the prior: factor out half the channels,
    standardised given the other half (or, at the top level, all of them
    under the learned top prior)."""

    def __init__(self, in_channels: int, size: tuple[int, int], config: GlowConfig, top: bool):
        super().__init__()
        channels = in_channels * 4
        size = (size[0] // 2, size[1] // 2)
        self.squeeze = Squeeze()
        classes = config.num_classes if config.class_couplings else 0
        class_actnorm = bool(config.num_classes and config.class_actnorm)
        additive = config.coupling == "additive"
        self.steps = nn.ModuleList(
            FlowStep(channels, config.hidden, config.lu, additive, classes, class_actnorm)
            for _ in range(config.depth)
        )
        self.top = top
        self.split = channels if top else channels // 2  # channels factored out
        cond = None if top else channels - self.split
        self.prior = GaussianStandardize(self.split, cond, size)
        self.out_channels = channels - self.split

    def transforms(self) -> Sequence[Transform]:
        return [self.squeeze, *self.steps, self.prior]


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
        # 60 passes: the digits' test bits/dim stops improving at about 40, but
        # the 8,000 MNIST images' keeps improving past 40 (5,000 steps), and so
        # does a conditional Glow's class fidelity there (docs/conditional.md).
        "epochs": 60,
    }
    config_class = GlowConfig
    default_temperature = 0.7  # as in the Glow paper's samples

    @property
    def levels_take_label(self) -> bool:
        """Class couplings and class ActNorm put the label inside the levels."""
        config = self.config
        return bool(self.num_classes) and (config.class_couplings or config.class_actnorm)

    def __init__(self, config: GlowConfig) -> None:
        super().__init__(config)
        self.stack_levels(config.levels, lambda c, hw, top: GlowLevel(c, hw, config, top))
