"""The autoencoder's configuration: everything needed to rebuild the model
from a checkpoint, as plain Python values (see vae/config.py)."""

from __future__ import annotations

from dataclasses import dataclass

from genrun.errors import UserError

from ..config import ModelConfig, option

ARCHS = ("mlp", "conv")


@dataclass
class AEConfig(ModelConfig):
    data_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images
    # The lecture's k = 2 for pictures.
    latent_dim: int = option(2, "k: size of the bottleneck.", flag="--latent")
    arch: str = option("mlp", "mlp or conv encoder/decoder.")
    # mlp: units per hidden layer; conv: channels of the first stage.
    hidden: int = option(400, "MLP width or conv base channels.")
    # mlp: hidden layers; conv: convolutions per resolution stage.
    depth: int = option(1, "Hidden layers of the MLP.")
    # No nonlinearity anywhere (no ReLU, no output sigmoid): the lecture's
    # linear autoencoder, whose best solution is the PCA projection.
    linear: bool = option(False, "No nonlinearity at all: the linear AE that PCA bounds.")

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(v) for v in self.data_shape)
        if len(self.data_shape) != 3 or min(self.data_shape) < 1:
            raise UserError(f"data_shape must be (C, H, W), all positive; got {self.data_shape}")
        if self.arch not in ARCHS:
            raise UserError(f"unknown arch {self.arch!r}; use one of: {', '.join(ARCHS)}")
        if self.latent_dim < 1 or self.hidden < 1 or self.depth < 1:
            raise UserError("latent_dim, hidden and depth must all be at least 1")
