"""PCA, the autoencoder's baseline at the same bottleneck k: the lecture notes
that a linear encoder and decoder can do no better than projecting on the
first k principal components.

Fitted on flattened training pixels x / 255 in [0, 1] (the AE's own units),
in float64 so that the identity below holds to rounding: with the data's
covariance eigenvalues lambda_1 >= ... >= lambda_D (normalised by N), the mean
squared reconstruction error over the fitting data is sum_{i > k} lambda_i.
"""

from __future__ import annotations

import torch

from genrun.errors import UserError


class PCA:
    """x -> mean + V_k^T V_k (x - mean) on flattened images in [0, 1]."""

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, variances: torch.Tensor):
        self.mean = mean  # (D,)
        self.components = components  # (k, D), orthonormal rows
        self.variances = variances  # (min(N, D),) covariance eigenvalues, descending

    @classmethod
    def fit(cls, images: torch.Tensor, k: int) -> PCA:
        """The first k principal components of uint8 images (N, C, H, W)."""
        if len(images) < 2:
            raise UserError(f"PCA needs at least 2 training images, got {len(images)}")
        x = images.reshape(len(images), -1).double() / 255
        mean = x.mean(0)
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vh[:k], singular**2 / len(x))

    @property
    def k(self) -> int:
        return len(self.components)

    def discarded_variance(self) -> float:
        """sum_{i > k} lambda_i: the mean squared error on the fitting data."""
        return self.variances[self.k :].sum().item()

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (N, C, H, W) in [0, 1] -> their projections (float64, same shape)."""
        flat = x.reshape(len(x), -1).double() - self.mean.to(x.device)
        components = self.components.to(x.device)
        return ((flat @ components.T) @ components + self.mean.to(x.device)).reshape(x.shape)

    def squared_error(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image sum over pixels of the squared reconstruction error (N,)."""
        return ((self.reconstruct(x) - x.double()) ** 2).flatten(1).sum(1)
