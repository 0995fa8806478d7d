"""The importance-weighted bound (Burda et al. 2016) that the VAE and the
hierarchical VAE evaluate, written once over their `log_weight` and noise,
and the rest of what the two share (`ImportanceWeighted`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from .quantization import discretization_nats
from .vae.likelihoods import pixels_to_float


def iwae_bound(
    log_weight: Callable[[torch.Tensor, Any], torch.Tensor],
    noise: Callable[[int, int], Any],
    x: torch.Tensor,
    iw_samples: int,
    chunk: int,
) -> torch.Tensor:
    """log (1/K) sum_k w_k per image (N,) of float images x, K = iw_samples, log w_k =
    log_weight(x, eps_k) with eps = noise(samples, N). Each pass draws at most
    `chunk` images' worth (samples x batch), so memory is bounded whatever K;
    the passes' log-sum-exps combine exactly."""
    per_pass = max(1, chunk // len(x))
    partial = [
        torch.logsumexp(log_weight(x, noise(min(per_pass, iw_samples - start), len(x))), 0)
        for start in range(0, iw_samples, per_pass)
    ]
    return torch.logsumexp(torch.stack(partial), 0) - math.log(iw_samples)


class ImportanceWeighted:
    """What the VAE and the HVAE share, as a mixin before `GenerativeModel`.
    The model provides `config.pixels`, `decoder.likelihood`,
    `log_weight(x, eps)` (no random ops inside) and `_noise(*lead)` (eps with
    leading dimensions `lead`)."""

    iwae_chunk: int = 4096  # images per pass of the IWAE bound (samples x batch)

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the pixels the likelihood models (config.pixels)."""
        return pixels_to_float(x, self.config.pixels)

    def discretization_term(self) -> float:
        """Nats that turn a density of the float pixels into a probability of
        the discrete image: D ln 256 for Gaussians on grey pixels x / 255 (the
        flows' convention; their spacing is really 1/255), 0 for binary pixels
        (spacing 1) and for Bernoulli, already a mass (a pseudo-one on grey pixels)."""
        if self.decoder.likelihood.discrete or self.config.pixels == "binary":
            return 0.0
        return discretization_nats(self.config.num_dims, 8)

    def iwae_bound(
        self,
        x: torch.Tensor,
        iw_samples: int,
        chunk: int | None = None,
        label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Importance-weighted bound log (1/K) sum_k w_k per image (N,) of
        uint8 images (Burda et al. 2016); K = 1 is the MC ELBO. Each pass
        holds at most `chunk` images (samples x batch, default `iwae_chunk`),
        so memory is bounded whatever K. A conditional model's bounds
        log p(x | label)."""
        chunk = chunk or self.iwae_chunk
        log_weight = self.log_weight
        if label is not None:
            log_weight = functools.partial(self.log_weight, label=label)
        return iwae_bound(log_weight, self._noise, self.to_float(x), iw_samples, chunk)

    def bits_per_dim(self, nll: torch.Tensor) -> torch.Tensor:
        """-log p(x) in nats of the float pixels -> bits/dim of the uint8 image."""
        return (nll + self.discretization_term()) / (self.config.num_dims * math.log(2))
