"""The hierarchical VAE's configuration: everything needed to rebuild the
model from a checkpoint, and the latent layout it implies.

The likelihood fields (`likelihood`, `sigma`, `pixels`) mean what they mean
for the VAE, whose likelihood classes the HVAE reuses, so NLLs compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genrun.errors import UserError

from ..config import ModelConfig, option
from ..vae.config import PIXELS, _check_choice
from ..vae.likelihoods import LIKELIHOODS
from ..vae.networks import conv_stages


@dataclass
class HVAEConfig(ModelConfig):
    data_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images
    # z_1 is the top, coarsest group, z_L the finest.
    groups: int = option(3, "L: groups of latents, coarse to fine.")
    latent_channels: int = option(4, "Channels of each group's spatial latent.")
    hidden: int = option(32, "Channels of the residual towers.")
    cells: int = option(1, "Residual cells per group in each tower.")
    # p(x|z), a key of vae.likelihoods.LIKELIHOODS.
    likelihood: str = option("bernoulli", "bernoulli, gaussian or gaussian-learned.")
    sigma: float = option(0.1, "Noise level s of the fixed Gaussian decoder.")
    pixels: str = option("grey", "grey ([0,1]) or binary (x >= 128).")
    kl_warmup: int = option(500, "Steps over which the KL weight rises from 0 to 1.")

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(v) for v in self.data_shape)
        if len(self.data_shape) != 3 or min(self.data_shape) < 1:
            raise UserError(f"data_shape must be (C, H, W), all positive; got {self.data_shape}")
        _check_choice("likelihood", self.likelihood, tuple(LIKELIHOODS))
        _check_choice("pixels", self.pixels, PIXELS)
        if min(self.groups, self.latent_channels, self.hidden, self.cells) < 1:
            raise UserError("groups, latent_channels, hidden and cells must all be at least 1")
        if self.kl_warmup < 0:
            raise UserError(f"kl_warmup must be >= 0 steps, got {self.kl_warmup}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise UserError(f"sigma must be a positive number, got {self.sigma}")

    @property
    def stages(self) -> int:
        """Stride-2 resolution stages of the towers (28 -> 14 -> 7: 2; 8 -> 4: 1)."""
        return conv_stages(*self.data_shape[1:])

    def group_levels(self) -> list[int]:
        """Each group's resolution level j (latents at H / 2^j), top group first.

        Latents live at the halved resolutions 1..stages (full resolution only
        when no side can halve): 7x7 and 14x14 for MNIST, 4x4 for the 8x8
        digits. Groups split over them coarse to fine, the coarser levels
        taking the extra groups: L = 3 on MNIST gives 7x7, 7x7, 14x14."""
        levels = list(range(self.stages, 0, -1)) or [0]
        per_level, extra = divmod(self.groups, len(levels))
        counts = [per_level + (i < extra) for i in range(len(levels))]
        return [level for level, count in zip(levels, counts, strict=True) for _ in range(count)]

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of z_1 ... z_L, the shapes of the noise each group takes."""
        _, h, w = self.data_shape
        return [(self.latent_channels, h >> j, w >> j) for j in self.group_levels()]
