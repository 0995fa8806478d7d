"""Export-only modules, one per engine role, for each model family.

Every role is a plain `nn.Module` whose inputs and outputs are exactly the
engine's: noise and temperatures come in as inputs (never drawn inside a
graph), images cross as uint8. The family registry is gentrain's `FAMILIES`:
a model class lists its `roles` and names its `graphs` module, which has one
builder `ROLE_graph(model, fold) -> Graph` per role, `pixel_mapping(model)`
and optionally `FOLDS_ACTNORM = True` (the exporter then also reports the
graph's nodes after folding, and before it with --count-unfolded). Adding a
family or a role needs no edit here (see CONTRIBUTING.md).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from genrun.errors import UserError
from genrun.manifest import PixelMapping
from gentrain.models import FAMILIES, GenerativeModel, model_class

from .base import BATCH, Builder, Graph, nats_per_bpd
from .multiscale import check_actnorm_initialized


def exportable() -> list[str]:
    """The families with graphs to export."""
    return [family for family, cls in FAMILIES.items() if cls.roles]


def roles(family: str) -> tuple[str, ...]:
    """The roles a family exports, in the order `genexport onnx` writes them."""
    return model_class(family).roles


def graphs_module(family: str) -> ModuleType:
    """The family's graphs module (`graphs` of its model class), checked to
    build every role the class lists."""
    cls = model_class(family)
    module = import_module(cls.graphs)
    missing = [
        f"{role}_graph"
        for role in cls.roles
        if not callable(getattr(module, f"{role}_graph", None))
    ]
    if not callable(getattr(module, "pixel_mapping", None)):
        missing.append("pixel_mapping")
    if missing:
        raise ValueError(f"{cls.graphs} (the {family} graphs) lacks {', '.join(missing)}")
    return module


def builder(family: str, role: str) -> Builder:
    """The function that builds `role`'s Graph for a model of `family`."""
    known = roles(family)
    if role not in known:
        raise UserError(f"a {family} model has no '{role}' graph; choose from: {', '.join(known)}")
    return getattr(graphs_module(family), f"{role}_graph")


def build_graph(model: GenerativeModel, role: str, fold: bool = True) -> Graph:
    """The export module and reference of `role` for a trained model."""
    return builder(model.family, role)(model, fold)


# The conditional flows' extra graph: the marginal density engine (role density,
# no label input), written as NAME.marginal.onnx by `genexport onnx --marginal`.
MARGINAL = "marginal"


def marginal_builder(model: GenerativeModel) -> Builder:
    """The function (fold) -> Graph of a conditional model's marginal density
    engine, or a one-line UserError where there is none."""
    build = getattr(graphs_module(model.family), "marginal_graph", None)
    if build is None or not model.num_classes:
        raise UserError(
            "--marginal writes the marginal density engine of a class-conditional glow or "
            f"realnvp (trained with --conditional); this {model.family} model has none"
        )
    return lambda fold: build(model, fold)


def folds_actnorm(family: str) -> bool:
    """Whether the family's graphs fold ActNorm into 1x1 convolutions (Glow)."""
    return getattr(graphs_module(family), "FOLDS_ACTNORM", False)


def pixel_mapping(model: GenerativeModel) -> PixelMapping:
    """How the model's float images relate to uint8 pixels, for the manifest."""
    return graphs_module(model.family).pixel_mapping(model)


__all__ = [
    "BATCH",
    "MARGINAL",
    "Builder",
    "Graph",
    "build_graph",
    "builder",
    "check_actnorm_initialized",
    "exportable",
    "folds_actnorm",
    "graphs_module",
    "marginal_builder",
    "nats_per_bpd",
    "pixel_mapping",
    "roles",
]
