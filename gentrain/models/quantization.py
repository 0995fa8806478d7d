"""Discrete pixels <-> continuous model values, and the bits/dim formula.

A flow models a density over continuous y. Pixels are integers, so (as in
openai/glow) we keep the top `n_bits` of each pixel, add uniform noise inside
its bin and scale to [-0.5, 0.5):

    y = (floor(x / 2^(8 - n_bits)) + u) / 2^n_bits - 0.5,    u ~ U[0, 1)

The scaling has Jacobian (1 / 2^n_bits)^D, so the probability of the discrete
image is bounded below by log p(y) - D log(2^n_bits). Every bits/dim in this
toolkit (training, evaluation, exported density graphs) comes from
`bits_per_dim` below, so the numbers compare with published ones.

The (H)VAE's and the autoencoder's images are values in [0, 1] instead:
`means_to_uint8` maps them to pixels.
"""

from __future__ import annotations

import math

import torch


def dequantize(x: torch.Tensor, n_bits: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images -> float y in [-0.5, 0.5). `noise` in [0, 1) of x's shape;
    None means bin centres (0.5), the deterministic choice for evaluation."""
    bins = 2**n_bits
    levels = torch.div(x.to(torch.int64), 2 ** (8 - n_bits), rounding_mode="floor").float()
    offset = 0.5 if noise is None else noise
    return (levels + offset) / bins - 0.5


def quantize(y: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Continuous y (any range) -> uint8 images, the inverse of `dequantize`
    up to the noise: clamp, take the bin, spread the bins back over 0..255."""
    bins = 2**n_bits
    levels = torch.floor((y + 0.5) * bins).clamp(0, bins - 1)
    return (levels * (255 / (bins - 1))).round().to(torch.uint8)


def discretization_nats(num_dims: int, n_bits: int) -> float:
    """log of the Jacobian of the scaling to [-0.5, 0.5): D * log(2^n_bits)."""
    return num_dims * n_bits * math.log(2.0)


def bits_per_dim(log_py: torch.Tensor, num_dims: int, n_bits: int) -> torch.Tensor:
    """Per-image bits/dim of the discrete image from the continuous log-density."""
    return -(log_py - discretization_nats(num_dims, n_bits)) / (num_dims * math.log(2.0))


def means_to_uint8(mean: torch.Tensor) -> torch.Tensor:
    """Pixel values in [0, 1] (decoder means, reconstructions) -> uint8 images,
    for samples and exported decoders alike."""
    return (mean.clamp(0, 1) * 255).round().to(torch.uint8)
