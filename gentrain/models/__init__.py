"""The model families, by the name the CLI and checkpoints use.

Each family lives in its own folder with a config dataclass beside the model.
`TRAIN_DEFAULTS` holds the optimiser settings each family trains well with;
the CLI's options override them.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from genrun.errors import UserError
from genrun.readers import DataSplit

from .ae import AE, AEConfig
from .base import GenerativeModel
from .glow import Glow, GlowConfig
from .hvae import HVAE, HVAEConfig
from .realnvp import RealNVP, RealNVPConfig
from .vae import VAE, VAEConfig

FAMILIES: dict[str, type[GenerativeModel]] = {
    "ae": AE,
    "glow": Glow,
    "hvae": HVAE,
    "vae": VAE,
    "realnvp": RealNVP,
}

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
    # The VAE's settings plus a short warm-up and clipping: early steps of a
    # hierarchy with batch norm can spike before the KL warm-up settles them.
    "hvae": {
        "optimizer": "adam",
        "lr": 2e-3,
        "batch_size": 32,
        "warmup": 100,
        "clip": 100.0,
        "epochs": 30,
    },
    "ae": {"optimizer": "adam", "lr": 1e-3, "batch_size": 64, "epochs": 30},  # not tuned yet
    # Measured on the digits at equal CPU time (1 minute): 3e-3 beat 1e-3 and 2e-3,
    # for batch norm too; Glow's other settings. Its 40 epochs are Glow's, untested.
    "realnvp": {
        "optimizer": "adam",
        "lr": 3e-3,
        "batch_size": 64,
        "warmup": 200,
        "clip": 50.0,
        "ema": 0.999,
        "epochs": 40,
    },
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


def new_model(family: str, options: dict, data: DataSplit, seed: int) -> GenerativeModel:
    """The model a new run starts from: `options` (config fields; None or
    missing take the config's default) for `data`'s image shape, flows at the
    data's own bit depth unless told, weights drawn from `seed`."""
    config = {k: v for k, v in options.items() if v is not None}
    if "n_bits" in {f.name for f in fields(model_class(family).config_class)}:
        config.setdefault("n_bits", data.bits)
    torch.manual_seed(seed)
    return build_model(family, {"data_shape": data.shape, **config})


__all__ = [
    "AE",
    "FAMILIES",
    "HVAE",
    "TRAIN_DEFAULTS",
    "VAE",
    "AEConfig",
    "Glow",
    "GlowConfig",
    "HVAEConfig",
    "RealNVP",
    "RealNVPConfig",
    "VAEConfig",
    "build_model",
    "new_model",
]
