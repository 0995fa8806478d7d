"""RealNVP's graphs: the multi-scale flows' `generate` and `density` roles
(multiscale.py), Glow's too, with the same
inputs, outputs and manifest (noise_i per scale and temperature -> images and
pixels; uint8 images and offset -> bits/dim, log P(x), latent_i per scale).

Both families are `MultiScaleFlow`s, so the same role modules run a RealNVP
as they are: `freeze_flow` finds no 1x1 convolutions to bake and copies the
flow in eval mode, where batch normalisation is the affine map of its running
averages and the masks are constants.
"""

from __future__ import annotations

from .multiscale import density_graph, generate_graph, marginal_graph, pixel_mapping

__all__ = ["density_graph", "generate_graph", "marginal_graph", "pixel_mapping"]
