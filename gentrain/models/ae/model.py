"""Deterministic autoencoder (the lecture's first model): an encoder f maps an
image to a code h = f(x) of size k, a decoder g maps it back, and training
minimises the reconstruction error

    MSE = 1/N sum_x |g(f(x)) - x|^2

on pixels x / 255 in [0, 1]; the decoder ends in a sigmoid (or, for the
linear AE, in nothing). There is no prior over codes, so nothing to sample:
the pictures use `encode_mean` / `decode_mean`, as for the VAE.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from genrun.errors import UserError
from genrun.manifest import DECODE, ENCODE

from ..base import GenerativeModel, Objective
from ..quantization import means_to_uint8
from ..vae.networks import build_networks
from .config import AEConfig
from .pca import PCA


class AE(GenerativeModel):
    family = "ae"
    roles = (DECODE, ENCODE)
    graphs = "genexport.graphs.ae"
    label = "AE"
    description = "a deterministic autoencoder; reports the test MSE (summed over pixels in [0, 1])"
    has_prior = False
    # Not tuned yet.
    train_defaults: ClassVar = {
        "optimizer": "adam",
        "lr": 1e-3,
        "batch_size": 64,
        "epochs": 30,
    }  # untuned
    config_class = AEConfig
    headline_metric = "mse"

    def __init__(self, config: AEConfig) -> None:
        super().__init__(config)
        activation = nn.Identity if config.linear else nn.ReLU
        self.encoder, self.decoder = build_networks(config, config.latent_dim, activation)
        self.output = nn.Identity() if config.linear else nn.Sigmoid()
        # Fitted on demand by `fit_baselines`; not part of the weights.
        self.pca: PCA | None = None

    @staticmethod
    def to_float(x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> pixels in [0, 1]."""
        return x.float() / 255

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (N, C, H, W) -> codes h = f(x), (N, k)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, k) -> reconstructions g(z) (N, C, H, W), in [0, 1] unless linear."""
        return self.output(self.decoder(z))

    def squared_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image |g(f(x)) - x|^2 summed over pixels (N,), of float images."""
        return ((self.decode(self.encode(x)) - x) ** 2).flatten(1).sum(1)

    def objective(self, x: torch.Tensor) -> Objective:
        """The lecture's MSE: per-image squared error summed over pixels, mean over the batch."""
        loss = self.squared_error(self.to_float(x)).mean()
        return Objective(loss=loss, metrics={"mse": loss.item()})

    def fit_baselines(self, train_images: torch.Tensor) -> None:
        """PCA at the same k on the training images, reported by `evaluate` as pca_mse."""
        self.pca = PCA.fit(train_images, self.config.latent_dim)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, iw_samples: int = 1) -> dict[str, torch.Tensor]:
        """Per-image metrics (N,) of uint8 images: mse, the squared error summed
        over the pixels in [0, 1] (the lecture's convention: a sum, not a mean
        over pixels), and pca_mse, PCA's in the same units, once
        `fit_baselines` has run. `iw_samples` is unused: nothing is random."""
        x = self.to_float(x)
        metrics = {"mse": self.squared_error(x)}
        if self.pca is not None:
            metrics["pca_mse"] = self.pca.squared_error(x)
        return metrics

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        raise UserError(
            "an autoencoder has no prior to sample from; train a VAE (`gentrain fit vae`) "
            "for samples, or decode codes of real images"
        )

    @torch.no_grad()
    def preview(self, test_images: torch.Tensor) -> tuple[str, torch.Tensor]:
        """Rows of (up to) 8 test images, each followed by the row of their
        reconstructions: the AE's picture in place of samples."""
        n = min(32, len(test_images))
        x = test_images[: n - n % 8 if n >= 8 else n].to(self.device)
        rows = zip(x.split(8), self.decode_mean(self.encode_mean(x)).split(8), strict=True)
        return "reconstructions", torch.cat([row for pair in rows for row in pair])

    # The latent-space pictures need only these two, named as the VAE's.
    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> codes f(x), (N, k)."""
        return self.encode(self.to_float(x.to(self.device)))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Codes (N, k) -> reconstructions as uint8 images (N, C, H, W), clipped to [0, 1]."""
        return means_to_uint8(self.decode(z.to(self.device)))
