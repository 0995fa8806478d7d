"""What every plot kind draws from."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from genrun.errors import UserError
from genrun.readers import ImageSet

from ..models.base import GenerativeModel


@dataclass
class PlotInputs:
    models: list[tuple[str, GenerativeModel]]  # (label, model), label as the picture names it
    test: ImageSet  # the test split the pictures take real images from
    n: int  # images, rows, pairs or grid side: each kind says which
    seed: int  # picks the test images and seeds the noise
    project: str = "none"  # latent-scatter: "pca" projects codes of k != 2 to 2-D

    def pick(self, count: int) -> np.ndarray:
        """Up to `count` distinct test-image indices (all of a smaller split),
        the same for a seed whatever the models, so two checkpoints are shown
        the same images."""
        total = len(self.test.images)
        return np.random.default_rng(self.seed).choice(total, min(count, total), replace=False)

    def images(self, index: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.test.images[index]))


def codes_of(model: GenerativeModel, x: torch.Tensor, batch: int = 500) -> np.ndarray:
    """Encoder means (N, k) of uint8 images, in batches."""
    parts = [model.encode_mean(x[i : i + batch]).cpu() for i in range(0, len(x), batch)]
    return torch.cat(parts).numpy()


# -- what a model offers, checked by capability rather than family name


def has_code(model: GenerativeModel) -> bool:
    """Autoencoders and VAEs: codes of images and images of codes (of no
    class: a conditional VAE's codes depend on the label)."""
    coded = hasattr(model, "encode_mean") and hasattr(model, "decode_mean")
    return coded and not getattr(model, "num_classes", 0)


def is_flow(model: GenerativeModel) -> bool:
    """Flows: images <-> standard-normal latents per level (forward / reverse)."""
    return callable(getattr(model, "reverse", None)) and hasattr(model.config, "n_bits")


def latent_path(model: GenerativeModel) -> bool:
    """Images to latents and back with no class: codes, or an unconditional flow."""
    return has_code(model) or (is_flow(model) and not getattr(model, "num_classes", 0))


def conditional(model: GenerativeModel) -> bool:
    """Class-conditional models (trained with --conditional)."""
    return getattr(model, "num_classes", 0) > 0


def class_names(model: GenerativeModel) -> list[str]:
    """The classes as the data named them, or their indices."""
    names = model.config.class_names
    return list(names) if names else [str(i) for i in range(model.num_classes)]


def samples(model: GenerativeModel) -> bool:
    """Models that draw samples with a temperature; asked by drawing one (a
    plain autoencoder refuses), on a forked RNG so the caller's draws stay put."""
    label = 0 if getattr(model, "num_classes", 0) else None
    try:
        with torch.random.fork_rng(devices=[]):
            model.sample(1, 1.0, **({} if label is None else {"label": label}))
    except (UserError, NotImplementedError):
        return False
    return True


def samples_levels(model: GenerativeModel) -> bool:
    """Hierarchical models that can hold their top latent groups fixed."""
    return samples(model) and "fixed_levels" in inspect.signature(model.sample).parameters
