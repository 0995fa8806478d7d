"""Glow's graphs: the multi-scale flows' `generate` and `density` roles
(multiscale.py), where `freeze_flow` bakes Glow's 1x1 convolutions as constants
and, with `fold`, merges each with the ActNorm before it."""

from __future__ import annotations

from .multiscale import density_graph, generate_graph, marginal_graph, pixel_mapping

# The exporter reports the float32 graph's nodes after folding (and before, if asked).
FOLDS_ACTNORM = True

__all__ = ["FOLDS_ACTNORM", "density_graph", "generate_graph", "marginal_graph", "pixel_mapping"]
