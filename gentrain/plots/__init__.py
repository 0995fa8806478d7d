"""`gentrain plot KIND`: the lecture's pictures from checkpoints.

Each kind declares what a model must offer (a latent code, an invertible
flow, sampling with a temperature, ...) and is checked against the loaded
models by capability, not by family name, so a new family that offers the
same calls gets the same pictures. A model that cannot make a picture is a
one-line UserError listing the kinds it can make.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from genrun.errors import UserError
from genrun.readers import ImageSet

from ..models.base import GenerativeModel
from . import classes, codes, interpolation, sampling
from .canvas import save_figure
from .inputs import PlotInputs, conditional, has_code, latent_path, samples, samples_levels


@dataclass(frozen=True)
class PlotKind:
    draw: Callable[[PlotInputs], object]  # -> a matplotlib Figure
    supports: Callable[[GenerativeModel], bool]
    needs: str  # what `supports` asks for, in words
    default_n: int  # images (or rows, pairs, grid side) when --n is not given
    max_models: int = 1


KINDS: dict[str, PlotKind] = {
    "reconstructions": PlotKind(
        codes.reconstructions, has_code, "an encoder and a decoder", 100, 2
    ),
    "latent-scatter": PlotKind(codes.latent_scatter, has_code, "a latent code", 256, 2),
    "manifold": PlotKind(codes.manifold, has_code, "a 2-D latent code", 20),
    "interpolation": PlotKind(
        interpolation.interpolation,
        latent_path,
        "a latent code or a flow (without classes)",
        6,
    ),
    "temperature": PlotKind(
        sampling.temperature_sweep,
        samples,
        "sampling with a temperature",
        8,
    ),
    "hvae-levels": PlotKind(
        sampling.hvae_levels, samples_levels, "latent groups to hold fixed", 36
    ),
    "class-temperature": PlotKind(
        classes.class_temperature, conditional, "a class-conditional model", 6
    ),
    "class-interpolation": PlotKind(
        classes.class_interpolation, conditional, "a class-conditional model", 10
    ),
}
PLOT_KINDS = tuple(KINDS)
PROJECTIONS = ("none", "pca")


def kinds_for(model: GenerativeModel) -> list[str]:
    """The plot kinds `model` can make."""
    return [name for name, kind in KINDS.items() if kind.supports(model)]


def make_plot(
    kind: str,
    models: list[tuple[str, GenerativeModel]],
    test: ImageSet,
    out: str | Path,
    n: int | None = None,
    seed: int = 0,
    project: str = "none",
) -> Path:
    """Draw `kind` for the (label, model) pairs on `test` images and write a PNG."""
    if kind not in KINDS:
        raise UserError(f"unknown plot kind {kind!r}; use one of: {', '.join(PLOT_KINDS)}")
    spec = KINDS[kind]
    if len(models) > spec.max_models:
        raise UserError(f"{kind} takes {spec.max_models} checkpoint(s); drop the extra ones")
    for label, model in models:
        if not spec.supports(model):
            can = ", ".join(kinds_for(model)) or "none of the plots"
            raise UserError(f"{kind} needs {spec.needs}; the {label} checkpoint can make: {can}")
    if n is not None and n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if project not in PROJECTIONS:
        raise UserError(f"unknown projection {project!r}; use one of: {', '.join(PROJECTIONS)}")
    inputs = PlotInputs(models, test, spec.default_n if n is None else n, seed, project)
    with torch.no_grad():
        figure = spec.draw(inputs)
    return save_figure(figure, out)


__all__ = ["PLOT_KINDS", "PROJECTIONS", "PlotInputs", "kinds_for", "make_plot"]
