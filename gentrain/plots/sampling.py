"""Samples: the temperature sweep of the Glow paper and the hierarchical
VAE's samples with its top latent groups held fixed (the lecture's NVAE slides)."""

from __future__ import annotations

import math

import torch

from .canvas import new_figure, show_images
from .inputs import PlotInputs

TEMPERATURES = (0.0, 0.25, 0.6, 0.7, 0.8, 0.9, 1.0)  # as in Kingma & Dhariwal 2018
# (groups held fixed, panel title)
LEVELS = ((0, "all levels sampled"), (1, "fixed $z_1$"), (2, "fixed $z_1$ and $z_2$"))


def temperature_sweep(inputs: PlotInputs):
    """One row of n samples per temperature, all rows from the same noise (a
    conditional model's of the classes 0, 1, ... in turn)."""
    (label, model), n = inputs.models[0], inputs.n
    k = getattr(model, "num_classes", 0)
    classes = {"label": torch.arange(n) % k} if k else {}
    fig, axes = new_figure(8.0, 8.0, len(TEMPERATURES), 1)
    for ax, temperature in zip(axes[:, 0], TEMPERATURES, strict=True):
        torch.manual_seed(inputs.seed)
        show_images(ax, model.sample(n, temperature, **classes).cpu().numpy(), n)
        ax.set_ylabel(f"T = {temperature}")
    fig.suptitle(f"{label}: samples at temperature T (the same noise in every row)")
    return fig


def hvae_levels(inputs: PlotInputs):
    """n samples per panel with 0, 1 and 2 top groups held fixed (as many as
    the model has), at the model's default temperature, each from the same seed."""
    (label, model), n = inputs.models[0], inputs.n
    levels = [(fixed, title) for fixed, title in LEVELS if fixed <= model.config.groups]
    fig, axes = new_figure(3.6 * len(levels), 4.0, 1, len(levels))
    for ax, (fixed, title) in zip(axes[0], levels, strict=True):
        torch.manual_seed(inputs.seed)
        images = model.sample(n, model.default_temperature, fixed_levels=fixed)
        show_images(ax, images.cpu().numpy(), math.ceil(math.sqrt(n)), title)
    fig.suptitle(f"{label}: samples at T = {model.default_temperature}")
    return fig
