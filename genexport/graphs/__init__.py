"""Export-only modules, one per engine role, for each model family.

Every role is a plain `nn.Module` whose inputs and outputs are exactly the
engine's: noise and temperatures come in as inputs (never drawn inside a
graph), images cross as uint8. Each family has a module here exposing
`ROLES`, `build(model, role, fold) -> Graph` and `pixel_mapping(model)`;
adding a family means adding its module to `FAMILY_GRAPHS`.
"""

from __future__ import annotations

from types import ModuleType

from genrun.errors import UserError
from genrun.manifest import PixelMapping
from gentrain.models import GenerativeModel

from . import ae, glow, hvae, realnvp, vae
from .base import BATCH, Graph, nats_per_bpd
from .multiscale import check_actnorm_initialized

FAMILY_GRAPHS: dict[str, ModuleType] = {
    "ae": ae,
    "glow": glow,
    "hvae": hvae,
    "realnvp": realnvp,
    "vae": vae,
}
ROLES: dict[str, tuple[str, ...]] = {family: m.ROLES for family, m in FAMILY_GRAPHS.items()}


def build_graph(model: GenerativeModel, role: str, fold: bool = True) -> Graph:
    """The export module and reference of `role` for a trained model."""
    roles = ROLES[model.family]
    if role not in roles:
        raise UserError(
            f"a {model.family} model has no '{role}' graph; choose from: {', '.join(roles)}"
        )
    return FAMILY_GRAPHS[model.family].build(model, role, fold)


def pixel_mapping(model: GenerativeModel) -> PixelMapping:
    """How the model's float images relate to uint8 pixels, for the manifest."""
    return FAMILY_GRAPHS[model.family].pixel_mapping(model)


__all__ = [
    "BATCH",
    "FAMILY_GRAPHS",
    "ROLES",
    "Graph",
    "build_graph",
    "check_actnorm_initialized",
    "nats_per_bpd",
    "pixel_mapping",
]
