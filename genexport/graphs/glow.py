"""Glow's graphs: the multi-scale flows' `generate` and `density` roles
(multiscale.py), where `freeze_flow` bakes Glow's 1x1 convolutions as constants
and, with `fold`, merges each with the ActNorm before it."""

from __future__ import annotations

from .multiscale import ROLES, TEMPERATURE_EFFECT, build, pixel_mapping

__all__ = ["ROLES", "TEMPERATURE_EFFECT", "build", "pixel_mapping"]
