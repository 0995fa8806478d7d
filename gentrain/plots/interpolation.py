"""Linear interpolation in latent space between two real test images (the
lecture's Glow slide): a flow maps both images to its latents (forward, at
bin centres), each level's latent is interpolated and mapped back (reverse);
an autoencoder or VAE interpolates its encoder means and decodes them."""

from __future__ import annotations

import numpy as np
import torch

from genrun.errors import UserError

from ..models.quantization import dequantize, quantize
from .canvas import new_figure, show_images
from .inputs import PlotInputs, codes_of, has_code

STEPS = 8  # pictures from one image to the other, both ends included


def interpolation(inputs: PlotInputs):
    """n rows: real image a, STEPS interpolants, real image b."""
    label, model = inputs.models[0]
    n = min(inputs.n, len(inputs.test.images) // 2)
    if n < 1:
        raise UserError("interpolation needs at least 2 test images; pass --data with more")
    index = inputs.pick(2 * n)
    xa, xb = inputs.images(index[:n]), inputs.images(index[n:])
    weights = torch.linspace(0, 1, STEPS)
    if has_code(model):
        path, how = _code_path(model, xa, xb, weights), "encoder means"
    else:
        path, how = _flow_path(model, xa, xb, weights), "the flow's latents"
    rows = torch.cat([xa[:, None], path.cpu(), xb[:, None]], 1)  # (n, STEPS + 2, C, H, W)
    fig, axes = new_figure(10.0, 6.0)
    ax = axes[0, 0]
    show_images(ax, rows.flatten(0, 1).numpy(), STEPS + 2, f"{label}: interpolation of {how}")
    side = rows.shape[-1]
    centres = 1 + np.arange(STEPS + 2) * (side + 1) + (side - 1) / 2
    names = ["image a", *(f"{w:.2f}" for w in weights.tolist()), "image b"]
    ax.set_xticks(centres, names, fontsize="small")
    ax.set_xlabel("weight of image b (ends: the real test images)")
    return fig


def _code_path(model, xa, xb, weights) -> torch.Tensor:
    za, zb = torch.from_numpy(codes_of(model, xa)), torch.from_numpy(codes_of(model, xb))
    z = torch.lerp(za[:, None], zb[:, None], weights[None, :, None])  # (n, STEPS, k)
    images = model.decode_mean(z.flatten(0, 1))
    return images.view(len(xa), len(weights), *images.shape[1:])


def _flow_path(model, xa, xb, weights) -> torch.Tensor:
    n_bits, device = model.config.n_bits, model.device
    latents_a, _ = model(dequantize(xa.to(device), n_bits))
    latents_b, _ = model(dequantize(xb.to(device), n_bits))
    w = weights.to(device).view(1, -1, 1, 1, 1)
    mixed = [
        torch.lerp(a[:, None], b[:, None], w).flatten(0, 1)
        for a, b in zip(latents_a, latents_b, strict=True)
    ]
    images = quantize(model.reverse(mixed, 1.0), n_bits)
    return images.view(len(xa), len(weights), *images.shape[1:])
