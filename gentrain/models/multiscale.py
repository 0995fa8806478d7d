"""What every multi-scale flow shares (Glow, RealNVP): the map from continuous
images to standard-normal noise per level and back, the change of variables,
dequantised bits/dim for training and evaluation, and sampling.

A family builds `self.levels`, each a `FlowLevel`: a composite of invertible
layers (the flow contract, `transforms.py`) whose output's first `split`
channels are that level's latent, the rest what the next level transforms.
Every prior is folded into its level, so the flow maps data y to noise
eps_1 .. eps_L with

    log p(y) = sum_l log N(eps_l; 0, I) + log|det d(eps)/dy|

and sampling is reverse(T * eps) with eps ~ N(0, I) and temperature T. The
config provides `n_bits`, `num_dims` and `latent_shapes()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .base import GenerativeModel, Objective
from .quantization import bits_per_dim, dequantize, discretization_nats, quantize
from .transforms import CompositeTransform


class FlowLevel(CompositeTransform):
    """One scale of a multi-scale flow, the contract Glow's and RealNVP's share:
    a composite transform (its layers, prior included, in `transforms()`) of
    the level's input, after which the first `split` channels are the level's
    standard-normal latent and the other `out_channels` go on to the next
    level at half the resolution. At the `top` level every channel is latent."""

    top: bool
    split: int  # channels factored out as this level's latent
    out_channels: int  # channels handed to the next level


class MultiScaleFlow(GenerativeModel):
    headline_metric = "bpd"

    def stack_levels(self, count: int, make: Callable[[int, tuple[int, int], bool], nn.Module]):
        """`self.levels` from `make(channels, (height, width), top)`: each level
        hands its `out_channels` on at half the resolution (it squeezes 2x2)."""
        c, h, w = self.config.data_shape
        levels = []
        for i in range(count):
            level = make(c, (h, w), i == count - 1)
            levels.append(level)
            c, h, w = level.out_channels, h // 2, w // 2
        self.levels = nn.ModuleList(levels)

    # -- the flow ---------------------------------------------------------
    def forward(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Continuous images y -> (standard-normal latents per level, log|det|):
        each level's latent is factored out of its output, the rest goes on."""
        latents, total = [], None
        h = y
        for level in self.levels:
            x, logabsdet = level(h)
            if level.top:
                latents.append(x)
            else:
                latents.append(x[:, : level.split])
                h = x[:, level.split :]
            total = logabsdet if total is None else total + logabsdet
        return latents, total

    def reverse(
        self, latents: list[torch.Tensor], temperature: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """Standard-normal latents per level -> continuous images. A tensor
        temperature of shape (N,) gives each sample its own."""
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.view(-1, 1, 1, 1)
        h = None
        for level, eps in zip(reversed(self.levels), reversed(latents), strict=True):
            eps = eps * temperature
            h, _ = level.inverse(eps if h is None else torch.cat([eps, h], 1))
        return h

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y) in nats per image, for continuous y in [-0.5, 0.5)."""
        return self.log_prob_of(*self(y))

    @staticmethod
    def log_prob_of(latents: list[torch.Tensor], logdet: torch.Tensor) -> torch.Tensor:
        """log p(y) from what `forward(y)` returned: the change of variables."""
        log_normal = sum(
            (-0.5 * (eps**2 + math.log(2 * math.pi))).flatten(1).sum(1) for eps in latents
        )
        return log_normal + logdet

    # -- the GenerativeModel contract --------------------------------------
    def objective(self, x: torch.Tensor) -> Objective:
        y = dequantize(x, self.config.n_bits, torch.rand(x.shape, device=x.device))
        bpd = bits_per_dim(self.log_prob(y), self.config.num_dims, self.config.n_bits)
        loss = bpd.mean()
        return Objective(loss, {"bpd": loss.item()})

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, iw_samples: int = 1) -> dict[str, torch.Tensor]:
        """bpd: with one draw of uniform dequantisation noise, the variational
        bound papers report; nll: -log P(x) in nats from it; with iw_samples
        K > 1 also bpd_iw: the importance-weighted bound
        log P(x) >= log (1/K) sum_k p(y_k) 2^(-n_bits D), u_k ~ U[0,1)^D,
        tighter as K grows. These bound -log P(x) >= 0 of the discrete image,
        so a draw's estimate below 0 is raised to 0. bpd_density_at_centers:
        the density at bin centres, deterministic, NOT a bound (negative for
        images simpler than the data, e.g. all black)."""
        n_bits, dims = self.config.n_bits, self.config.num_dims
        draws = [
            self.log_prob(dequantize(x, n_bits, torch.rand(x.shape, device=x.device)))
            for _ in range(iw_samples)
        ]
        log_center = self.log_prob(dequantize(x, n_bits))
        metrics = {
            "bpd": bits_per_dim(draws[0], dims, n_bits).clamp(min=0),
            "bpd_density_at_centers": bits_per_dim(log_center, dims, n_bits),
            "nll": (discretization_nats(dims, n_bits) - draws[0]).clamp(min=0),
        }
        if iw_samples > 1:
            log_mean = torch.logsumexp(torch.stack(draws), 0) - math.log(iw_samples)
            metrics["bpd_iw"] = bits_per_dim(log_mean, dims, n_bits).clamp(min=0)
        return metrics

    def noise(self, n: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Standard-normal latents for n samples, from the global torch RNG."""
        return [torch.randn(n, *shape, device=device) for shape in self.config.latent_shapes()]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        device = next(self.parameters()).device
        y = self.reverse(self.noise(n, device), temperature)
        return quantize(y, self.config.n_bits)
