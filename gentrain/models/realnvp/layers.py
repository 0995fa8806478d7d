"""RealNVP's invertible layers (Dinh, Sohl-Dickstein & Bengio 2017), under
the toolkit's one flow contract (`gentrain/models/transforms.py`):

    forward(x) -> (y, logabsdet),  inverse(y) -> (x, logabsdet)

Squeeze and ActNorm are Glow's own; what is new here are the masks, the
masked affine coupling with its residual network, and batch normalisation as
an invertible layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..glow.layers import ActNorm, ZeroConv2d
from ..transforms import Transform, per_item


def checkerboard_mask(height: int, width: int, parity: int) -> torch.Tensor:
    """(1, 1, H, W): 1 where (i + j + parity) is even. Those pixels pass through
    and condition the others; parity 1 swaps the roles."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    return ((i + j + parity) % 2 == 0).float().view(1, 1, height, width)


def channel_mask(channels: int, parity: int) -> torch.Tensor:
    """(1, C, 1, 1): 1 on the first half of the channels (parity 0) or the second."""
    first = (torch.arange(channels) < channels // 2).float()
    return (first if parity == 0 else 1 - first).view(1, channels, 1, 1)


class BatchNorm(Transform):
    """Batch normalisation as an invertible layer (RealNVP, section 3.7):
    y = (x - mu) / sqrt(var + eps) * exp(log_gamma) + beta per channel, with
    log|det| = H W sum(log_gamma - log(var + eps) / 2).

    Training uses the batch's statistics (the log-det treats them as the
    constants of that batch's affine map) and updates running averages; eval
    and every reverse pass use the running averages, so sampling and exported
    graphs are a fixed affine map."""

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1))
        self.momentum, self.eps = momentum, eps

    def _log_scale(self, var: torch.Tensor) -> torch.Tensor:
        return self.log_gamma - 0.5 * torch.log(var + self.eps)

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        log_scale = self._log_scale(var)
        y = (x - mean) * torch.exp(log_scale) + self.beta
        return y, per_item(x.shape[2] * x.shape[3] * log_scale.sum(), x)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale = self._log_scale(self.running_var)
        x = (y - self.beta) * torch.exp(-log_scale) + self.running_mean
        return x, per_item(-y.shape[2] * y.shape[3] * log_scale.sum(), y)


def make_norm(kind: str, channels: int) -> Transform:
    """The invertible normalisation `kind` ("batchnorm" or "actnorm")."""
    return BatchNorm(channels) if kind == "batchnorm" else ActNorm(channels)


class ResidualBlock(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))), pre-activation as in He et al. 2016."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = make_norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)[0]))
        return x + self.conv2(F.relu(self.norm2(h)[0]))


class ResNet(nn.Module):
    """The coupling's network: conv3x3 -> residual blocks -> norm -> ReLU ->
    zero-initialised conv3x3 (so every coupling starts as the identity)."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int, norm: str):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, norm) for _ in range(blocks))
        self.norm = make_norm(norm, hidden)
        self.out = ZeroConv2d(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(F.relu(self.norm(h)[0]))


class MaskedAffineCoupling(Transform):
    """y = b x + (1 - b) (x exp(s(b x)) + t(b x)) with a fixed binary mask b
    (checkerboard or channel), log|det| = sum((1 - b) s).

    s = scale * tanh(raw) with a learned per-channel scale (the paper's
    parameterisation): |s| <= |scale|, so the reverse x = (y - t) exp(-s) stays
    finite however far a latent lies from the data."""

    def __init__(self, mask: torch.Tensor, channels: int, hidden: int, blocks: int, norm: str):
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)  # rebuilt from the config
        self.net = ResNet(channels, 2 * channels, hidden, blocks, norm)
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))

    def _shift_log_scale(self, x_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, shift = self.net(x_id).chunk(2, dim=1)
        free = 1 - self.mask
        return shift * free, self.scale * torch.tanh(raw) * free

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        x_id = x * self.mask  # the same going either way: y b = x b
        shift, log_scale = self._shift_log_scale(x_id)
        y = x_id + (1 - self.mask) * (x * torch.exp(log_scale) + shift)
        return y, log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        y_id = y * self.mask
        shift, log_scale = self._shift_log_scale(y_id)
        x = y_id + (1 - self.mask) * (y - shift) * torch.exp(-log_scale)
        return x, -log_scale.flatten(1).sum(1)
