"""The contract every model family implements, so that training, evaluation,
sampling and checkpoints are written once.

Images cross this boundary as uint8 tensors of shape (N, C, H, W); each model
owns its mapping to floats (declared in its config) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class Objective:
    """What one training step minimises, plus numbers worth logging.

    `loss` is a scalar (mean over the batch) to call backward on. `metrics`
    holds detached floats, e.g. {"bpd": 1.31} or {"nelbo": 98.2, "kl": 24.1}.
    """

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set `family`, `config_class`,
    `label` and `description`, and whichever of the other facts differ; every
    place that needs a fact about a family reads it here, never its name."""

    family: str = ""  # the name the CLI, checkpoints and manifests use
    config_class: type = object
    label: str = ""  # how pictures and tables name the family, e.g. "Glow"
    description: str = ""  # what `gentrain fit FAMILY` trains and reports, for its --help
    # Whether the family has a prior to sample from (an autoencoder has none).
    has_prior: bool = True
    # Importance samples K that `gentrain eval` uses unless told (1: no bound to tighten).
    default_iw_samples: int = 1
    # TrainConfig values the family trains well with; the CLI's options override them.
    train_defaults: ClassVar[dict[str, Any]] = {}
    # The metric that `train` shows in its progress bar and evaluation picks
    # for "lower is better" comparisons.
    headline_metric: str = ""
    # The sampling temperature pictures use unless told otherwise.
    default_temperature: float = 1.0
    # The engine graphs genexport writes for the family, in this order (role
    # names of genrun.manifest), and the module that builds them (named, not
    # imported: training never needs it): one `ROLE_graph(model, fold) ->
    # Graph` per role and `pixel_mapping(model)`; see genexport/graphs.
    roles: ClassVar[tuple[str, ...]] = ()
    graphs: ClassVar[str] = ""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def objective(self, x: torch.Tensor) -> Objective:
        """Training loss on a uint8 batch (uses fresh noise: dequantisation,
        reparameterisation)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, iw_samples: int = 1) -> dict[str, torch.Tensor]:
        """Per-image test metrics on a uint8 batch, each a float tensor (N,);
        `iw_samples` importance samples tighten the family's likelihood bound."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n images as uint8 (n, C, H, W), drawn with the global torch RNG."""
        raise NotImplementedError

    def fit_baselines(self, train_images: torch.Tensor) -> None:
        """Fit what `evaluate` compares the model with (e.g. the autoencoder's
        PCA) on the uint8 training images; most families have nothing to fit."""

    @torch.no_grad()
    def preview(self, test_images: torch.Tensor) -> tuple[str, torch.Tensor]:
        """The picture `gentrain fit` saves after training, as (name, uint8
        images laid out 8 per row): 64 samples, unless the family cannot sample."""
        return "samples", self.sample(64, self.default_temperature)
