"""The model families, by the name the CLI and checkpoints use.

Each family lives in its own folder with a config dataclass beside the model.
`TRAIN_DEFAULTS` holds the optimiser settings each family trains well with;
the CLI's options override them.
"""

from __future__ import annotations

from genrun.errors import UserError

from .base import GenerativeModel
from .glow import Glow, GlowConfig
from .vae import VAE, VAEConfig

FAMILIES: dict[str, type[GenerativeModel]] = {"glow": Glow, "vae": VAE}

# Measured on MNIST (benchmarks/results/glow-sweep.md, quality-*.md): Adam at
# a high constant rate with weight averaging beat Adamax and cosine decay for
# Glow; small batches at 2e-3 beat the usual 128 at 1e-3 for the VAE.
TRAIN_DEFAULTS: dict[str, dict] = {
    "glow": {
        "optimizer": "adam",
        "lr": 2e-3,
        "batch_size": 64,
        "warmup": 200,
        "clip": 50.0,
        "ema": 0.999,
        "epochs": 40,  # the digits' test bits/dim stops improving here
    },
    "vae": {"optimizer": "adam", "lr": 2e-3, "batch_size": 32, "epochs": 30},
}


def model_class(family: str) -> type[GenerativeModel]:
    try:
        return FAMILIES[family]
    except KeyError:
        raise UserError(
            f"unknown model family '{family}'; use one of: {', '.join(FAMILIES)}"
        ) from None


def build_model(family: str, config: dict) -> GenerativeModel:
    """A fresh model from its family name and config values (as stored)."""
    cls = model_class(family)
    return cls(cls.config_class.from_dict(config))


__all__ = ["FAMILIES", "TRAIN_DEFAULTS", "VAE", "Glow", "GlowConfig", "VAEConfig", "build_model"]
