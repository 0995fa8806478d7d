"""The importance-weighted bound (Burda et al. 2016) that the VAE and the
hierarchical VAE evaluate, written once over their `log_weight` and noise."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


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
