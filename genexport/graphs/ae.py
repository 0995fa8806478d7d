"""The autoencoder's graphs: `decode` (codes -> images) and `encode` (uint8
images -> codes). Like the VAE's, they call the model's own `decode` and
`encode`; there is no `elbo` (no likelihood) and `decode` is for decoding
codes of real images, not for sampling (an AE has no prior)."""

from __future__ import annotations

import torch
from torch import nn

from genrun.manifest import DECODE, ENCODE, IMAGES, PIXELS, PixelMapping, TensorSpec, Z
from gentrain.models import AE
from gentrain.models.quantization import means_to_uint8

from .base import BATCH, Graph


class AEDecode(nn.Module):
    """z (N, k) -> (images: reconstructions in [0, 1], uint8 pixels)."""

    def __init__(self, model: AE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.model.decode(z)
        return images, means_to_uint8(images)


class AEEncode(nn.Module):
    """uint8 images -> codes f(x / 255), (N, k)."""

    def __init__(self, model: AE) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(self.model.to_float(images))


def pixel_mapping(model: AE) -> PixelMapping:
    """Reconstructions are pixels in [0, 1]; nothing is a density, so no discretisation term."""
    return PixelMapping(
        n_bits=8,
        value_range=[0.0, 1.0],
        from_uint8="x01 = x / 255",
        to_uint8="x = round(clip(x01, 0, 1) * 255)",
        discretization_nats=0.0,
    )


def decode_graph(model: AE, fold: bool = True) -> Graph:
    """Codes -> reconstructions (images) and pixels. No temperature: an AE has
    no prior, so genrun's Sampler refuses it."""
    config = model.config
    shape, code = [BATCH, *config.data_shape], [BATCH, config.latent_dim]
    module = AEDecode(model)

    def sample_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randn(n, config.latent_dim, generator=generator),)

    return Graph(
        role=DECODE,
        module=module,
        reference=module,
        inputs=[TensorSpec(Z, "float32", code, "codes, e.g. from the encode graph")],
        outputs=[
            TensorSpec(
                IMAGES, "float32", shape, "reconstructions in [0, 1] (linear AE: unclipped)"
            ),
            TensorSpec(PIXELS, "uint8", shape, "images mapped to uint8"),
        ],
        sample_inputs=sample_inputs,
        checks={IMAGES: "image", PIXELS: "pixels"},
        num_dims=config.num_dims,
        pixel_bits=8,
    )


def encode_graph(model: AE, fold: bool = True) -> Graph:
    """uint8 images -> codes f(x)."""
    config = model.config
    shape, code = [BATCH, *config.data_shape], [BATCH, config.latent_dim]
    module = AEEncode(model)

    def sample_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (torch.randint(0, 256, (n, *config.data_shape), generator=generator).byte(),)

    return Graph(
        role=ENCODE,
        module=module,
        reference=module,
        inputs=[TensorSpec(IMAGES, "uint8", shape, "images to encode")],
        outputs=[TensorSpec(Z, "float32", code, "codes f(x)")],
        sample_inputs=sample_inputs,
        checks={Z: "latent"},
        num_dims=config.num_dims,
        pixel_bits=8,
    )
