"""Planar and radial flows (Rezende & Mohamed 2015) that make the VAE's
posterior richer than a diagonal Gaussian: z_0 ~ q_0(z|x) = N(mu, diag sigma^2),
z_K = f_K o ... o f_1(z_0), and

    log q_K(z_K|x) = log q_0(z_0|x) - sum_k log|det df_k/dz_{k-1}|.

The flow parameters are amortised, as in the paper: the encoder network
outputs them per image next to (mu, log sigma^2), so each layer here has no
weights of its own. Under the toolkit's one flow contract
(`gentrain/models/transforms.py`) the raw parameters are the context:
forward(z, params) -> (z', log|det dz'/dz|); neither map has a closed-form
inverse, so `inverse` raises InverseNotAvailable.
Raw parameters are unconstrained; each layer maps them onto the paper's
invertibility condition (appendix A), so any encoder output gives an
invertible map. z may carry leading sample dimensions (..., N, k) in front of
the parameters' (N, P), as importance sampling needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genrun.errors import UserError

from ..transforms import CompositeTransform, Transform


class PlanarFlow(Transform):
    """f(z) = z + u_hat tanh(w^T z + b), log|det| = log|1 + u_hat^T w tanh'(w^T z + b)|.

    Invertible iff w^T u_hat >= -1: u_hat = u + (m(w^T u) - w^T u) w / |w|^2
    with m(a) = -1 + softplus(a), so w^T u_hat = m(w^T u) > -1."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_params = 2 * latent_dim + 1  # u, w, b

    def constrained(
        self, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw parameters (N, 2k + 1) -> (u_hat, w, b, w^T u_hat = m(w^T u) > -1).
        The last is returned as m(w^T u): recomputing it from u_hat would
        cancel catastrophically when |u| is large."""
        u, w, b = params.split([self.latent_dim, self.latent_dim, 1], dim=-1)
        wu = (w * u).sum(-1, keepdim=True)
        wu_hat = F.softplus(wu) - 1
        # The floor only matters for w = 0, where the flow is the identity anyway.
        u_hat = u + (wu_hat - wu) * w / (w * w).sum(-1, keepdim=True).clamp_min(1e-30)
        return u_hat, w, b, wu_hat

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u_hat, w, b, wu_hat = self.constrained(params)
        h = torch.tanh((w * z).sum(-1, keepdim=True) + b)
        log_det = torch.log(torch.abs(1 + (1 - h**2) * wu_hat))
        return z + u_hat * h, log_det.squeeze(-1)


class RadialFlow(Transform):
    """f(z) = z + beta_hat (z - z_0) / (alpha + r), r = |z - z_0|, with
    log|det| = (k - 1) log(1 + beta_hat h) + log(1 + beta_hat h + beta_hat h' r),
    h = 1 / (alpha + r). Invertible iff beta_hat >= -alpha: alpha = softplus(a),
    beta_hat = -alpha + softplus(b)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_params = latent_dim + 2  # z_0, alpha, beta

    def constrained(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw parameters (N, k + 2) -> (z_0, alpha > 0, beta_hat >= -alpha)."""
        z0, a, b = params.split([self.latent_dim, 1, 1], dim=-1)
        alpha = F.softplus(a)
        return z0, alpha, -alpha + F.softplus(b)

    def forward(self, z: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z0, alpha, beta = self.constrained(params)
        diff = z - z0
        r = torch.sqrt((diff * diff).sum(-1, keepdim=True))
        h = 1 / (alpha + r)
        # 1 + beta h + beta h' r with h' = -h^2 simplifies to 1 + beta alpha h^2.
        log_det = (self.latent_dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h**2)
        return z + beta * h * diff, log_det.squeeze(-1)


FLOWS: dict[str, type[Transform]] = {"planar": PlanarFlow, "radial": RadialFlow}


def parse_posterior_flow(spec: str) -> tuple[str, int]:
    """'planar:8' -> ('planar', 8); '' -> ('', 0), no flow."""
    if not spec:
        return "", 0
    kind, _, count = spec.partition(":")
    if kind not in FLOWS or not count.isdigit() or int(count) < 1:
        raise UserError(
            f"unknown posterior flow {spec!r}; use planar:K or radial:K with K >= 1 layers"
        )
    return kind, int(count)


class PosteriorFlow(CompositeTransform):
    """`count` layers of one kind; `num_params` raw numbers per image drive
    them all: forward(z_0 (..., N, k), params (N, num_params)) -> (z_K,
    sum_k log|det J_k| (..., N)), each layer reading its own slice of params."""

    def __init__(self, kind: str, count: int, latent_dim: int) -> None:
        super().__init__(FLOWS[kind](latent_dim) for _ in range(count))
        self.num_params = sum(layer.num_params for layer in self.layers)

    def contexts(self, params: torch.Tensor) -> list[torch.Tensor]:
        return list(params.split([layer.num_params for layer in self.layers], dim=-1))
