"""The model families, by the name the CLI and checkpoints use.

Each family lives in its own folder with a config dataclass beside the model;
what the rest of the toolkit needs to know about a family (its label, the
settings it trains well with, whether it has a prior, ...) is a class
attribute of its model (see `GenerativeModel`), never a check of its name.
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
    cls.family: cls for cls in (AE, Glow, HVAE, VAE, RealNVP)
}


def register_family(cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Make a model class a family the CLI, checkpoints and plots know by
    `cls.family` (usable as a class decorator); see CONTRIBUTING.md."""
    if not cls.family or not cls.label:
        raise ValueError(f"{cls.__name__} needs a `family` name and a `label`")
    FAMILIES[cls.family] = cls
    return cls


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
    data's own bit depth unless told, a conditional model for the data's
    classes, weights drawn from `seed`."""
    config = {k: v for k, v in options.items() if v is not None}
    for option in fields(model_class(family).config_class):
        if option.metadata.get("from_data"):  # e.g. the flows' n_bits: the data's bit depth
            config.setdefault(option.name, getattr(data, option.metadata["from_data"]))
    if config.get("conditional"):  # the classes come from the data's labels
        config.setdefault("class_counts", data.class_counts())
        config.setdefault("class_names", data.class_names or ())
        for option in fields(model_class(family).config_class):
            if "conditional_default" in option.metadata:  # e.g. Glow's class couplings
                config.setdefault(option.name, option.metadata["conditional_default"])
    torch.manual_seed(seed)
    return build_model(family, {"data_shape": data.shape, **config})


__all__ = [
    "AE",
    "FAMILIES",
    "HVAE",
    "VAE",
    "AEConfig",
    "GenerativeModel",
    "Glow",
    "GlowConfig",
    "HVAEConfig",
    "RealNVP",
    "RealNVPConfig",
    "VAEConfig",
    "build_model",
    "model_class",
    "new_model",
    "register_family",
]
