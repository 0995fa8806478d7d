"""Glow (Kingma & Dhariwal 2018): a multi-scale flow of ActNorm -> 1x1 conv ->
coupling steps with squeezes and factored-out latents.

The map goes data y -> standard-normal noise per level (eps_1 .. eps_L), every
prior folded in as a `GaussianStandardize` layer, so

    log p(y) = sum_l log N(eps_l; 0, I) + log|det d(eps)/dy|

and sampling is reverse(T * eps) with eps ~ N(0, I) and temperature T.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import GenerativeModel, Objective
from ..quantization import bits_per_dim, dequantize, discretization_nats, quantize
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


class Glow(GenerativeModel):
    family = "glow"
    config_class = GlowConfig
    headline_metric = "bpd"
    default_temperature = 0.7  # as in the Glow paper's samples

    def __init__(self, config: GlowConfig) -> None:
        super().__init__(config)
        c, h, w = config.data_shape
        levels = []
        for i in range(config.levels):
            top = i == config.levels - 1
            level = GlowLevel(c, (h, w), config, top)
            levels.append(level)
            c, h, w = level.out_channels, h // 2, w // 2
        self.levels = nn.ModuleList(levels)

    # -- the flow ---------------------------------------------------------
    def forward(self, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Continuous images y -> (standard-normal latents per level, log|det|)."""
        logdet = torch.zeros(y.shape[0], device=y.device)
        latents = []
        h = y
        for level in self.levels:
            h, eps, logdet = level(h, logdet)
            latents.append(eps)
        return latents, logdet

    def reverse(
        self, latents: list[torch.Tensor], temperature: float | torch.Tensor = 1.0
    ) -> torch.Tensor:
        """Standard-normal latents per level -> continuous images. A tensor
        temperature of shape (N,) gives each sample its own."""
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.view(-1, 1, 1, 1)
        h = None
        for level, eps in zip(reversed(self.levels), reversed(latents), strict=True):
            h = level.reverse(h, eps * temperature)
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
        bound papers report; bpd_center: at bin centres, deterministic (what
        density engines compute by default); nll: -log P(x) in nats from the
        bound. With iw_samples K > 1 also bpd_iw: the importance-weighted bound
        log P(x) >= log (1/K) sum_k p(y_k), u_k ~ U[0,1)^D, tighter as K grows."""
        n_bits, dims = self.config.n_bits, self.config.num_dims
        draws = [
            self.log_prob(dequantize(x, n_bits, torch.rand(x.shape, device=x.device)))
            for _ in range(iw_samples)
        ]
        log_center = self.log_prob(dequantize(x, n_bits))
        figures = {
            "bpd": bits_per_dim(draws[0], dims, n_bits),
            "bpd_center": bits_per_dim(log_center, dims, n_bits),
            "nll": -(draws[0] - discretization_nats(dims, n_bits)),
        }
        if iw_samples > 1:
            log_mean = torch.logsumexp(torch.stack(draws), 0) - math.log(iw_samples)
            figures["bpd_iw"] = bits_per_dim(log_mean, dims, n_bits)
        return figures

    def noise(self, n: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Standard-normal latents for n samples, from the global torch RNG."""
        return [torch.randn(n, *shape, device=device) for shape in self.config.latent_shapes()]

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        device = next(self.parameters()).device
        y = self.reverse(self.noise(n, device), temperature)
        return quantize(y, self.config.n_bits)
