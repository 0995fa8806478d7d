"""Export-only modules, one per engine role, for each model family.

Every role is a plain `nn.Module` whose inputs and outputs are exactly the
engine's: noise and temperatures come in as inputs (never drawn inside a
graph), images cross as uint8. Each family has a module here exposing
`BUILDERS` (role -> function (model, fold) -> Graph) and `pixel_mapping(model)`,
and optionally `FOLDS_ACTNORM = True` (the exporter then also reports the
graph's nodes before folding). Adding a family means adding its module to
`FAMILY_GRAPHS` (or `register_graphs`); adding a role, one builder to its
module's `BUILDERS` (see CONTRIBUTING.md).
"""

from __future__ import annotations

from types import ModuleType

from genrun.errors import UserError
from genrun.manifest import PixelMapping
from gentrain.models import GenerativeModel

from . import ae, glow, hvae, realnvp, vae
from .base import BATCH, Builder, Graph, nats_per_bpd
from .multiscale import check_actnorm_initialized

FAMILY_GRAPHS: dict[str, ModuleType] = {
    "ae": ae,
    "glow": glow,
    "hvae": hvae,
    "realnvp": realnvp,
    "vae": vae,
}


def register_graphs(family: str, graphs: ModuleType) -> None:
    """Make `family` exportable: `graphs` has BUILDERS and pixel_mapping."""
    if not graphs.BUILDERS or not callable(getattr(graphs, "pixel_mapping", None)):
        raise ValueError(f"the {family} graphs need BUILDERS and a pixel_mapping function")
    FAMILY_GRAPHS[family] = graphs


def roles(family: str) -> tuple[str, ...]:
    """The roles a family exports, in the order `genexport onnx` writes them."""
    return tuple(FAMILY_GRAPHS[family].BUILDERS)


def build_graph(model: GenerativeModel, role: str, fold: bool = True) -> Graph:
    """The export module and reference of `role` for a trained model."""
    builders = FAMILY_GRAPHS[model.family].BUILDERS
    if role not in builders:
        raise UserError(
            f"a {model.family} model has no '{role}' graph; choose from: {', '.join(builders)}"
        )
    return builders[role](model, fold)


# The conditional flows' extra graph: the marginal density engine (role density,
# no label input), written as NAME.marginal.onnx by `genexport onnx --marginal`.
MARGINAL = "marginal"


def marginal_builder(model: GenerativeModel) -> Builder:
    """The function (fold) -> Graph of a conditional model's marginal density
    engine, or a one-line UserError where there is none."""
    build = getattr(FAMILY_GRAPHS[model.family], "marginal_graph", None)
    if build is None or not model.num_classes:
        raise UserError(
            "--marginal writes the marginal density engine of a class-conditional glow or "
            f"realnvp (trained with --conditional); this {model.family} model has none"
        )
    return lambda fold: build(model, fold)


def folds_actnorm(family: str) -> bool:
    """Whether the family's graphs fold ActNorm into 1x1 convolutions (Glow)."""
    return getattr(FAMILY_GRAPHS[family], "FOLDS_ACTNORM", False)


def pixel_mapping(model: GenerativeModel) -> PixelMapping:
    """How the model's float images relate to uint8 pixels, for the manifest."""
    return FAMILY_GRAPHS[model.family].pixel_mapping(model)


__all__ = [
    "BATCH",
    "FAMILY_GRAPHS",
    "MARGINAL",
    "Builder",
    "Graph",
    "build_graph",
    "check_actnorm_initialized",
    "folds_actnorm",
    "marginal_builder",
    "nats_per_bpd",
    "pixel_mapping",
    "register_graphs",
    "roles",
]
