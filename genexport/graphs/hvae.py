"""The hierarchical VAE's graphs: `generate` (noise per group, temperature ->
images) and `elbo` (images, eps per group -> one importance weight log w per
image). The modules call the model's own `generate` and `log_weight`, so a
formula lives in one place; BatchNorm runs on its running statistics (the
model exports in eval mode), nothing else needs freezing."""

from __future__ import annotations

import torch
from torch import nn

from genrun.manifest import (
    ELBO,
    GENERATE,
    IMAGES,
    LOG_WEIGHT,
    PIXELS,
    TEMPERATURE,
    TensorSpec,
    eps_name,
    noise_name,
)
from gentrain.models import HVAE
from gentrain.models.quantization import means_to_uint8

from .base import BATCH, Graph
from .vae import pixel_mapping

TEMPERATURE_EFFECT = (
    "each group's noise_l is multiplied by the sample's temperature: "
    "z_l = mu_l + temperature * sigma_l * noise_l under the prior p(z_l | z_<l); "
    "1 samples the model, 0 gives the prior means group by group"
)

__all__ = ["elbo_graph", "generate_graph", "pixel_mapping"]


class HVAEGenerate(nn.Module):
    """(noise per group, temperature (N,)) -> (decoder means or probabilities
    in [0, 1], uint8 pixels)."""

    def __init__(self, model: HVAE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, noise: list[torch.Tensor], temperature: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params, _ = self.model.generate(noise, temperature.reshape(-1, 1, 1, 1))
        mean = self.model.decoder.likelihood.mean(params)
        return mean, means_to_uint8(mean)


class HVAEElbo(nn.Module):
    """(uint8 images, eps per group) -> log w = log p(x|z) + log p(z) - log q(z|x)
    at the posterior draws z_l = mu_q + sigma_q * eps_l, per image."""

    def __init__(self, model: HVAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, eps: list[torch.Tensor]) -> torch.Tensor:
        return self.model.log_weight(self.model.to_float(images), eps)


def _noise(model: HVAE, n: int, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(n, *s, generator=generator) for s in model.config.latent_shapes()]


def generate_graph(model: HVAE, fold: bool = True) -> Graph:
    """(noise per group, temperature) -> decoder means (images) and pixels.
    BatchNorm runs on its running statistics (the model exports in eval mode)."""
    model = model.eval()
    config = model.config
    shape = [BATCH, *config.data_shape]
    module = HVAEGenerate(model)

    def sample_inputs(n: int, generator: torch.Generator) -> tuple:
        return _noise(model, n, generator), torch.rand(n, generator=generator)

    return Graph(
        role=GENERATE,
        module=module,
        reference=module,
        inputs=[
            *(
                TensorSpec(noise_name(i), "float32", [BATCH, *s], f"N(0, I) noise of group {i}")
                for i, s in enumerate(config.latent_shapes())
            ),
            TensorSpec(TEMPERATURE, "float32", [BATCH], "per-sample scale of the noise"),
        ],
        outputs=[
            TensorSpec(IMAGES, "float32", shape, "pixel means or probabilities in [0, 1]"),
            TensorSpec(PIXELS, "uint8", shape, "images mapped to uint8"),
        ],
        sample_inputs=sample_inputs,
        checks={IMAGES: "image", PIXELS: "pixels"},
        num_dims=config.num_dims,
        pixel_bits=8,
        temperature=TEMPERATURE_EFFECT,
    )


def elbo_graph(model: HVAE, fold: bool = True) -> Graph:
    """(uint8 images, eps per group) -> one importance weight log w per image."""
    model = model.eval()
    config = model.config
    shape = [BATCH, *config.data_shape]
    module = HVAEElbo(model)

    def sample_inputs(n: int, generator: torch.Generator) -> tuple:
        with torch.no_grad():
            _, pixels = HVAEGenerate(model)(_noise(model, n, generator), torch.ones(n))
        return pixels, _noise(model, n, generator)

    return Graph(
        role=ELBO,
        module=module,
        reference=module,
        inputs=[
            TensorSpec(IMAGES, "uint8", shape, "images to score"),
            *(
                TensorSpec(
                    eps_name(i), "float32", [BATCH, *s], f"N(0, I) posterior noise of group {i}"
                )
                for i, s in enumerate(config.latent_shapes())
            ),
        ],
        outputs=[
            TensorSpec(LOG_WEIGHT, "float32", [BATCH], "log p(x|z) + log p(z) - log q(z|x) in nats")
        ],
        sample_inputs=sample_inputs,
        checks={LOG_WEIGHT: "nats"},
        num_dims=config.num_dims,
        pixel_bits=8,
    )
