"""The contract every model family implements, so that training, evaluation,
sampling and checkpoints are written once.

Images cross this boundary as uint8 tensors of shape (N, C, H, W); each model
owns its mapping to floats (declared in its config) and back. A
class-conditional model (`num_classes` K > 0: trained with --conditional)
models p(x|y) and p(y), and takes class labels, int64 (N,), wherever images
are modelled or drawn (`label=`).
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

    @property
    def num_classes(self) -> int:
        """K for a class-conditional model, 0 for any other."""
        return getattr(self.config, "num_classes", 0)

    def log_class_prior(self) -> torch.Tensor:
        """log p(y) (K,): each class's share of the training images."""
        counts = torch.tensor(self.config.class_counts, dtype=torch.float64)
        return (counts / counts.sum()).log().float().to(self.device)

    def check_label(self, label: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """`label` as the model takes it: int64 (n,) on its device for a
        conditional model (required), None for any other (refused). Float
        class weights (n, K) pass as they are: a mix of the classes."""
        if not self.num_classes:
            if label is not None:
                raise ValueError(f"a {self.family} model without --conditional takes no labels")
            return None
        if label is None:
            raise ValueError("a conditional model needs class labels (label=)")
        label = torch.as_tensor(label, device=self.device)
        if label.is_floating_point():
            if label.shape != (n, self.num_classes):
                raise ValueError(f"class weights must be ({n}, {self.num_classes})")
            return label.float()
        label = label.long()
        label = label.expand(n) if label.dim() == 0 else label
        if label.shape != (n,):
            raise ValueError(f"labels must be one class or {n}, got shape {tuple(label.shape)}")
        if label.min() < 0 or label.max() >= self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}")
        return label

    def objective(self, x: torch.Tensor, label: torch.Tensor | None = None) -> Objective:
        """Training loss on a uint8 batch (uses fresh noise: dequantisation,
        reparameterisation); a conditional model's is that of p(x|label)."""
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, iw_samples: int = 1, label: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-image test metrics on a uint8 batch, each a float tensor (N,);
        `iw_samples` importance samples tighten the family's likelihood bound.
        A conditional model's are those of p(x|label), plus those of p(x) and
        the generative classifier's (`accuracy`: 1 where argmax_y p(x|y) p(y)
        is the label)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, label: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """n images as uint8 (n, C, H, W), drawn with the global torch RNG; a
        conditional model's of the class `label` (one, or one per image)."""
        raise NotImplementedError

    def fit_baselines(self, train_images: torch.Tensor) -> None:
        """Fit what `evaluate` compares the model with (e.g. the autoencoder's
        PCA) on the uint8 training images; most families have nothing to fit."""

    @torch.no_grad()
    def preview(self, test_images: torch.Tensor) -> tuple[str, torch.Tensor]:
        """The picture `gentrain fit` saves after training, as (name, uint8
        images laid out 8 per row): 64 samples, unless the family cannot sample;
        a conditional model's, 8 per class, one row per class (the first 16)."""
        if self.num_classes:
            label = torch.arange(min(self.num_classes, 16)).repeat_interleave(8)
            return "samples", self.sample(len(label), self.default_temperature, label=label)
        return "samples", self.sample(64, self.default_temperature)
