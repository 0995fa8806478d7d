"""Decoder likelihoods p(x|z): one class per choice, and `LIKELIHOODS`, the only
place the config's `likelihood` name is turned into code.

The decoder network outputs raw per-pixel parameters of the data's shape; each
class says what they mean. `log_prob` sums over pixels, so it returns one
number per image; leading dimensions of `params` (e.g. K importance samples)
broadcast against x.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from ..stable import log_sigmoid

PIXEL_DIMS = (-3, -2, -1)
LOG_2PI = math.log(2 * math.pi)

# Bounds of the learned log-variance. A std below one grey level (1/256) would
# let the density on constant pixels (MNIST's black border) grow without bound
# and stop approximating a bin's probability mass; above 1 it spans all pixel values.
LOGVAR_MIN = 2 * math.log(1 / 256)
LOGVAR_MAX = 0.0


class LikelihoodConfig(Protocol):
    """What a likelihood reads from its model's config (a VAE's or an HVAE's;
    the config module imports this one, so it is not named here)."""

    likelihood: str
    sigma: float
    data_shape: tuple[int, int, int]


class Likelihood(nn.Module):
    """p(x|z) given the decoder's raw output `params` of shape (..., C, H, W)."""

    # True when log_prob is a probability mass (no density-to-bin correction needed).
    discrete: bool = False

    def __init__(self, config: LikelihoodConfig) -> None:
        super().__init__()

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x|z] as an image in [0, 1]."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Bernoulli(Likelihood):
    """params are logits. On grey pixels x in [0, 1] (not {0, 1}) the binary
    cross-entropy is the model's own pseudo-likelihood, not a normalised
    density (as in pytorch/examples' VAE): fine for training and comparing
    such models, not comparable with likelihoods on binarised MNIST."""

    discrete = True

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # x log s(l) + (1 - x) log s(-l) = x l + log s(-l): minus the binary
        # cross-entropy, written so that exported graphs stay finite (../stable.py).
        return (x * params + log_sigmoid(-params)).sum(PIXEL_DIMS)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class Gaussian(Likelihood):
    """N(x; mu, s^2 I) with the lecture's fixed noise level s = config.sigma.
    params are the means themselves (the lecture's mu_dec(z) = NN(z)), so a
    pixel can reach exactly 0 or 1; `mean` clips them to [0, 1] for display."""

    def __init__(self, config: LikelihoodConfig) -> None:
        super().__init__(config)
        # A buffer so it follows the model across devices; not saved, the config holds it.
        fixed = torch.tensor(2 * math.log(config.sigma))
        self.register_buffer("fixed_logvar", fixed, persistent=False)

    def log_variance(self) -> torch.Tensor:
        """log s^2, a scalar or per pixel."""
        return self.fixed_logvar

    def log_prob(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        logvar = self.log_variance()
        log_density = -0.5 * (LOG_2PI + logvar + (x - params) ** 2 * torch.exp(-logvar))
        return log_density.sum(PIXEL_DIMS)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params.clamp(0, 1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return params + torch.exp(0.5 * self.log_variance()) * torch.randn_like(params)


class LearnedGaussian(Gaussian):
    """N(x; mu, diag s^2) with a learned per-pixel log-variance (a free
    parameter of the data's shape, started at log sigma^2), clamped to
    [LOGVAR_MIN, LOGVAR_MAX]."""

    def __init__(self, config: LikelihoodConfig) -> None:
        super().__init__(config)
        self.logvar = nn.Parameter(torch.full(config.data_shape, 2 * math.log(config.sigma)))

    def log_variance(self) -> torch.Tensor:
        return self.logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": Bernoulli,
    "gaussian": Gaussian,
    "gaussian-learned": LearnedGaussian,
}


def build_likelihood(config: LikelihoodConfig) -> Likelihood:
    return LIKELIHOODS[config.likelihood](config)


def pixels_to_float(x: torch.Tensor, pixels: str) -> torch.Tensor:
    """uint8 images -> the pixels a likelihood models: "grey" x / 255 in [0, 1],
    "binary" x >= 128 -> {0, 1}."""
    if pixels == "binary":
        return (x >= 128).float()
    return x.float() / 255
