"""Encoder and decoder networks: images (N, C, H, W) -> `encoder_out` numbers
(for the VAE 2 * latent_dim: mean and log-variance of q(z|x), plus any
posterior-flow parameters), and z (N, latent_dim) -> per-pixel outputs
(N, C, H, W). Mirrored, as the lecture suggests. The autoencoder builds the
same networks with encoder_out = latent_dim.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn


class NetworkConfig(Protocol):
    """The config fields the networks read (VAEConfig and AEConfig have them)."""

    data_shape: tuple[int, int, int]
    latent_dim: int
    arch: str
    hidden: int
    depth: int

    @property
    def num_dims(self) -> int: ...


def build_networks(
    config: NetworkConfig,
    encoder_out: int | None = None,
    activation: type[nn.Module] = nn.ReLU,
) -> tuple[nn.Module, nn.Module]:
    """(encoder net, decoder net) for the config's architecture; the encoder
    gives `encoder_out` numbers (default 2 * latent_dim). `activation` goes
    between layers: nn.Identity makes both networks linear (the lecture's
    linear autoencoder)."""
    build = {"mlp": _mlp_networks, "conv": _conv_networks}[config.arch]
    return build(config, encoder_out or 2 * config.latent_dim, activation)


def _mlp_networks(
    config: NetworkConfig, encoder_out: int, activation: type[nn.Module]
) -> tuple[nn.Module, nn.Module]:
    """D -> hidden (x depth) -> encoder_out and k -> hidden (x depth) -> D,
    `activation` between."""

    def mlp(width_in: int, width_out: int) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for i in range(config.depth):
            layers += [
                nn.Linear(width_in if i == 0 else config.hidden, config.hidden),
                activation(),
            ]
        return [*layers, nn.Linear(config.hidden, width_out)]

    encoder = nn.Sequential(nn.Flatten(), *mlp(config.num_dims, encoder_out))
    decoder = nn.Sequential(
        *mlp(config.latent_dim, config.num_dims), nn.Unflatten(1, config.data_shape)
    )
    return encoder, decoder


def conv_stages(height: int, width: int) -> int:
    """How many times both sides halve exactly while staying at least 4, so
    that the transposed convolutions give back the very same size (28 -> 14 -> 7,
    32 -> ... -> 4, 8 -> 4; an odd side like 7 gets no stride-2 stage)."""
    stages = 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) >= 8:
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


def _conv_networks(
    config: NetworkConfig, encoder_out: int, activation: type[nn.Module]
) -> tuple[nn.Module, nn.Module]:
    """Stride-2 4x4 convolutions doubling the channels from `hidden` (one
    stride-1 3x3 stage instead where no side can halve), each stage followed by
    depth - 1 more 3x3 convolutions, then a linear layer to the latent
    statistics. The decoder mirrors it with transposed convolutions."""
    c, h, w = config.data_shape
    stages = conv_stages(h, w)
    strides = [2] * stages or [1]
    channels = [config.hidden * 2**i for i in range(len(strides))]
    top = (channels[-1], h // 2**stages, w // 2**stages)

    def resample(c_in: int, c_out: int, stride: int, transposed: bool) -> nn.Module:
        if stride == 1:
            return nn.Conv2d(c_in, c_out, 3, padding=1)
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        return conv(c_in, c_out, 4, stride=2, padding=1)

    def refine(ch: int) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for _ in range(config.depth - 1):
            layers += [nn.Conv2d(ch, ch, 3, padding=1), activation()]
        return layers

    encoder: list[nn.Module] = []
    for c_in, c_out, stride in zip([c, *channels[:-1]], channels, strides, strict=True):
        encoder += [resample(c_in, c_out, stride, transposed=False), activation(), *refine(c_out)]
    encoder += [nn.Flatten(), nn.Linear(top[0] * top[1] * top[2], encoder_out)]

    decoder: list[nn.Module] = [
        nn.Linear(config.latent_dim, top[0] * top[1] * top[2]),
        nn.Unflatten(1, top),
        activation(),
    ]
    outs = [*channels[-2::-1], c]
    for c_in, c_out, stride in zip(channels[::-1], outs, strides[::-1], strict=True):
        decoder += [*refine(c_in), resample(c_in, c_out, stride, transposed=True), activation()]
    decoder.pop()  # raw outputs: no activation on the last layer
    return nn.Sequential(*encoder), nn.Sequential(*decoder)
