"""The VAE's configuration: everything needed to rebuild the model from a checkpoint.

All fields are plain Python values so `asdict` survives
`torch.save` / `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from genrun.errors import UserError

from ..config import ModelConfig, conditional_option, option
from .likelihoods import LIKELIHOODS
from .posterior_flows import parse_posterior_flow

ARCHS = ("mlp", "conv")
PIXELS = ("grey", "binary")
KL_ESTIMATORS = ("closed", "mc")
CLOSED_KL_WITH_FLOW = (
    "the KL has no closed form with a posterior flow; use --kl mc (the default with a flow)"
)


def _check_choice(option: str, value: str, valid) -> None:
    if value not in valid:
        raise UserError(f"unknown {option} {value!r}; use one of: {', '.join(valid)}")


@dataclass
class VAEConfig(ModelConfig):
    data_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images
    latent_dim: int = option(20, "k: size of the latent code.", flag="--latent")
    arch: str = option("mlp", "mlp or conv encoder/decoder.")
    # mlp: units per hidden layer; conv: channels of the first stage.
    hidden: int = option(400, "MLP width or conv base channels.")
    # mlp: hidden layers; conv: convolutions per resolution stage.
    depth: int = option(1, "Hidden layers of the MLP.")
    # p(x|z), a key of likelihoods.LIKELIHOODS.
    likelihood: str = option("bernoulli", "bernoulli, gaussian or gaussian-learned.")
    # The lecture's fixed decoder std s (initial s for gaussian-learned).
    sigma: float = option(0.1, "Noise level s of the fixed Gaussian decoder.")
    pixels: str = option("grey", "grey ([0,1]) or binary (x >= 128).")
    # Training KL: "closed" form, or "mc" = log q(z|x) - log p(z) at the draw;
    # None picks closed, or mc with a posterior flow (which has no closed form).
    kl: str | None = option(None, "closed (analytic) or mc (Monte Carlo; the default with a flow).")
    # "" (diagonal Gaussian q(z|x)), or "planar:K" / "radial:K": K amortised
    # flow layers on top of it (Rezende & Mohamed 2015; posterior_flows.py).
    posterior_flow: str = option(
        "", "planar:K or radial:K flow layers on q(z|x) (Rezende & Mohamed 2015)."
    )
    conditional: bool = conditional_option()
    class_counts: tuple[int, ...] = ()  # training images per class (from the data)
    class_names: tuple[str, ...] = ()  # by label index, where the data names them

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(v) for v in self.data_shape)
        self.check_classes()
        if len(self.data_shape) != 3 or min(self.data_shape) < 1:
            raise UserError(f"data_shape must be (C, H, W), all positive; got {self.data_shape}")
        _check_choice("arch", self.arch, ARCHS)
        _check_choice("likelihood", self.likelihood, tuple(LIKELIHOODS))
        _check_choice("pixels", self.pixels, PIXELS)
        parse_posterior_flow(self.posterior_flow)
        if self.kl is None:
            self.kl = "mc" if self.posterior_flow else "closed"
        _check_choice("kl", self.kl, KL_ESTIMATORS)
        if self.kl == "closed" and self.posterior_flow:
            raise UserError(CLOSED_KL_WITH_FLOW)
        if self.latent_dim < 1 or self.hidden < 1 or self.depth < 1:
            raise UserError("latent_dim, hidden and depth must all be at least 1")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise UserError(f"sigma must be a positive number, got {self.sigma}")
