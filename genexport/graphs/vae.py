"""The VAE's graphs: `decode` (z -> images), `encode` (images -> q(z|x)) and
`elbo` (images, eps -> one importance weight log w per image). The modules
call the model's own methods (`decode`, `encode`, `log_weight`), so a formula
lives in one place; the model exports as trained (nothing to freeze)."""

from __future__ import annotations

import torch
from torch import nn

from genrun.manifest import (
    DECODE,
    ELBO,
    ENCODE,
    EPS,
    IMAGES,
    LOG_WEIGHT,
    LOGVAR,
    MU,
    PIXELS,
    PixelMapping,
    TensorSpec,
    Z,
)
from gentrain.models import VAE
from gentrain.models.quantization import means_to_uint8

from .base import BATCH, Graph, label_feeds, label_input

TEMPERATURE_EFFECT = (
    "the runtime multiplies the N(0, I) noise by the temperature and feeds it as z: "
    "z ~ N(0, T^2 I) under the prior; 1 samples the model, 0 decodes the prior mean"
)


class VAEDecode(nn.Module):
    """z (N, k)[, label (N,)] -> (images: pixel means or probabilities in
    [0, 1], uint8 pixels); a conditional VAE's of the class `label`."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, z: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.model.decoder.likelihood.mean(self.model.decode(z, label))
        return mean, means_to_uint8(mean)


class VAEEncode(nn.Module):
    """uint8 images[, label] -> (mu, log sigma^2) of q(z|x) (q(z|x, label))."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(self.model.to_float(images), label)


class VAEElbo(nn.Module):
    """(uint8 images, eps (N, k)[, label]) -> log w = log p(x|z) + log p(z) -
    log q(z|x) at z = mu + sigma * eps (then through the posterior flow, if
    any), per image; a conditional VAE's given the label."""

    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, eps: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model.log_weight(self.model.to_float(images), eps, label)


def pixel_mapping(model: VAE) -> PixelMapping:
    """How the decoder's means in [0, 1] relate to uint8 pixels."""
    config = model.config
    binary = config.pixels == "binary"
    likelihood = model.decoder.likelihood
    return PixelMapping(
        n_bits=1 if binary else 8,
        value_range=[0.0, 1.0],
        from_uint8="x01 = (x >= 128)" if binary else "x01 = x / 255",
        to_uint8="x = round(clip(mean, 0, 1) * 255)",
        discretization_nats=model.discretization_term(),
        likelihood=f"{config.likelihood} ({'probabilities' if likelihood.discrete else 'means'})",
    )


def _graph(model: VAE, role: str, module: nn.Module, **fields) -> Graph:
    """A VAE graph: the module is its own reference (nothing is frozen)."""
    return Graph(
        role=role,
        module=module,
        reference=module,
        num_dims=model.config.num_dims,
        pixel_bits=8,
        **fields,
    )


def _images(model: VAE, n: int, generator: torch.Generator) -> tuple:
    """Plausible uint8 inputs: decoded prior draws (and their labels, if conditional)."""
    z = torch.randn(n, model.config.latent_dim, generator=generator)
    labels = label_feeds(model.num_classes, n, generator)
    with torch.no_grad():
        return VAEDecode(model)(z, *labels)[1], labels


def decode_graph(model: VAE, fold: bool = True) -> Graph:
    """z -> decoder means (images) and pixels; the runtime draws z ~ N(0, T^2 I)."""
    config = model.config
    shape, code = [BATCH, *config.data_shape], [BATCH, config.latent_dim]

    def sample_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        return (
            torch.randn(n, config.latent_dim, generator=generator),
            *label_feeds(model.num_classes, n, generator),
        )

    return _graph(
        model,
        DECODE,
        VAEDecode(model),
        inputs=[
            TensorSpec(Z, "float32", code, "latent code; N(0, T^2 I) samples"),
            *label_input(model.num_classes, "sample"),
        ],
        outputs=[
            TensorSpec(IMAGES, "float32", shape, "pixel means or probabilities in [0, 1]"),
            TensorSpec(PIXELS, "uint8", shape, "images mapped to uint8"),
        ],
        sample_inputs=sample_inputs,
        checks={IMAGES: "image", PIXELS: "pixels"},
        temperature=TEMPERATURE_EFFECT,
    )


def encode_graph(model: VAE, fold: bool = True) -> Graph:
    """uint8 images -> (mu, logvar) of q(z|x)."""
    config = model.config
    shape, code = [BATCH, *config.data_shape], [BATCH, config.latent_dim]
    return _graph(
        model,
        ENCODE,
        VAEEncode(model),
        inputs=[
            TensorSpec(IMAGES, "uint8", shape, "images to encode"),
            *label_input(model.num_classes, "image"),
        ],
        outputs=[
            TensorSpec(MU, "float32", code, "mean of q(z|x) (of q_0 with a posterior flow)"),
            TensorSpec(LOGVAR, "float32", code, "log variance of q(z|x) (of q_0 with a flow)"),
        ],
        sample_inputs=lambda n, generator: (
            _images(model, n, generator)[0],
            *_images(model, n, generator)[1],
        ),
        checks={MU: "latent", LOGVAR: "latent"},
    )


def elbo_graph(model: VAE, fold: bool = True) -> Graph:
    """(uint8 images, eps) -> one importance weight log w per image."""
    config = model.config
    shape, code = [BATCH, *config.data_shape], [BATCH, config.latent_dim]

    def sample_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        eps = torch.randn(n, config.latent_dim, generator=generator)
        images, labels = _images(model, n, generator)
        return images, eps, *labels

    return _graph(
        model,
        ELBO,
        VAEElbo(model),
        inputs=[
            TensorSpec(IMAGES, "uint8", shape, "images to score"),
            TensorSpec(EPS, "float32", code, "N(0, I) noise of the reparameterisation"),
            *label_input(model.num_classes, "image"),
        ],
        outputs=[
            TensorSpec(LOG_WEIGHT, "float32", [BATCH], "log p(x|z) + log p(z) - log q(z|x) in nats")
        ],
        sample_inputs=sample_inputs,
        checks={LOG_WEIGHT: "nats"},
    )
