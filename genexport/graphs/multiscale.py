"""The multi-scale flows' graphs (Glow, RealNVP): `generate` (noise per level,
temperature -> images) and `density` (uint8 images -> bits/dim, log P(x),
latents), run on a frozen flow.

`freeze_flow` makes the flow exportable: Glow's LU-decomposed 1x1
convolutions, whose matrix ops (inverse, slogdet, lu) have no ONNX form,
become constant matrices computed once in float64, folded together with the
ActNorm before them into a single 1x1 convolution with bias in each direction.
The role modules only call the model's own methods (`reverse`, `log_prob_of`,
`dequantize`, `bits_per_dim`), so a formula lives in one place.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from genrun.errors import UserError
from genrun.manifest import (
    BITS_PER_DIM,
    CLASS_LOG_LIKELIHOOD,
    DENSITY,
    GENERATE,
    IMAGES,
    LOG_LIKELIHOOD,
    OFFSET,
    PIXELS,
    TEMPERATURE,
    PixelMapping,
    TensorSpec,
    latent_name,
    noise_name,
)
from gentrain.models import GenerativeModel
from gentrain.models.glow.layers import ActNorm, ClassActNorm, FlowStep, InvConv1x1
from gentrain.models.multiscale import MultiScaleFlow
from gentrain.models.quantization import bits_per_dim, dequantize, discretization_nats, quantize
from gentrain.models.transforms import Transform

from .base import BATCH, Graph, label_feeds, label_input
from .fused_coupling import fuse_couplings

TEMPERATURE_EFFECT = (
    "every noise_i is multiplied by the sample's temperature before the reverse flow: "
    "1 samples the model, 0 gives its mode, about 0.7 trades diversity for quality"
)


class Baked1x1(Transform):
    """y = W x + b per pixel with W, W^-1 and log|det W| fixed at export time
    (computed in float64), under the layers' contract (forward and inverse,
    each -> (outputs, logabsdet))."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, logdet_per_pixel: float):
        super().__init__()
        inverse = torch.linalg.inv(weight)
        self.register_buffer("weight", weight.float()[:, :, None, None])
        self.register_buffer("inverse_weight", inverse.float()[:, :, None, None])
        # x = W^-1 (y - b) = W^-1 y - W^-1 b: the reverse is a conv with bias too.
        self.register_buffer("bias", None if bias is None else bias.float())
        self.register_buffer("inverse_bias", None if bias is None else (-inverse @ bias).float())
        self.logdet_per_pixel = logdet_per_pixel

    @classmethod
    def from_conv(cls, conv: InvConv1x1) -> Baked1x1:
        """The 1x1 convolution alone (ActNorm stays a layer of its own)."""
        weight, logabsdet = copy.deepcopy(conv).double().weight_and_logabsdet()
        return cls(weight.detach(), None, logabsdet.item())

    @classmethod
    def fold(cls, norm: ActNorm, conv: InvConv1x1) -> Baked1x1:
        """ActNorm then the 1x1 convolution as one affine map:
        W diag(e^s) (x + b) = W' x + W' b with W' = W diag(e^s)."""
        weight, logabsdet = copy.deepcopy(conv).double().weight_and_logabsdet()
        logs, shift = norm.logs.detach().double().flatten(), norm.bias.detach().double().flatten()
        folded = weight.detach() * torch.exp(logs)[None, :]
        return cls(folded, folded @ shift, (logs.sum() + logabsdet).item())

    def _logabsdet(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_full((x.shape[0],), x.shape[2] * x.shape[3] * self.logdet_per_pixel)

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(x, self.weight, self.bias), self._logabsdet(x)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(y, self.inverse_weight, self.inverse_bias), -self._logabsdet(y)


def check_actnorm_initialized(model: GenerativeModel) -> None:
    """An ActNorm that never saw data is the identity: the checkpoint is untrained."""
    if not all(m.initialized for m in model.modules() if isinstance(m, ActNorm)):
        raise UserError(
            "the checkpoint's ActNorm layers were never initialised from data (no training "
            f"step ran); train it with `gentrain fit {model.family}` before exporting"
        )


def freeze_flow(model: MultiScaleFlow, fold: bool = True) -> MultiScaleFlow:
    """A copy of `model` whose flow steps export: each 1x1 convolution baked
    as constants and, with `fold`, merged with the ActNorm before it. The
    couplings and priors are the trained modules themselves. Any other
    multi-scale flow (RealNVP: no 1x1 convolutions) is copied in eval mode with
    its ActNorm flags made constants."""
    check_actnorm_initialized(model)
    frozen = copy.deepcopy(model).eval()
    for norm in frozen.modules():
        if isinstance(norm, ActNorm):
            # A buffer is a graph input to torch.export, so `if not initialized`
            # would be a data-dependent branch; as a constant it folds away.
            del norm._buffers["initialized"]
            norm.initialized = True
    for step in frozen.modules():
        if isinstance(step, FlowStep):
            norm, conv, coupling = step.layers
            # A class ActNorm's scale depends on the label: it stays a layer of its own.
            together = fold and not isinstance(norm, ClassActNorm)
            linear = [Baked1x1.fold(norm, conv)] if together else [norm, Baked1x1.from_conv(conv)]
            step.layers = nn.ModuleList([*linear, coupling])
    # Couplings and priors in fewer, cheaper nodes (fused_coupling.py).
    return fuse_couplings(frozen) if fold else frozen


# -- the roles -------------------------------------------------------------------
class FlowGenerate(nn.Module):
    """(noise per level, temperature (N,)[, label (N,)]) -> (images y, uint8
    pixels); a conditional flow's of the class `label`."""

    def __init__(self, flow: MultiScaleFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(
        self,
        noise: list[torch.Tensor],
        temperature: torch.Tensor,
        label: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.flow.reverse(noise, temperature, label)
        return y, quantize(y, self.flow.config.n_bits)


class FlowDensity(nn.Module):
    """(uint8 images, dequantisation offset[, label]) -> (bits/dim, log P(x)
    in nats, latents per level); a conditional flow's of P(x | label)."""

    def __init__(self, flow: MultiScaleFlow) -> None:
        super().__init__()
        self.flow = flow

    def forward(
        self, images: torch.Tensor, offset: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        config = self.flow.config
        y = dequantize(images, config.n_bits, offset)
        latents, logdet = self.flow(y, label)
        log_py = self.flow.log_prob_of(latents, logdet)
        log_px = log_py - discretization_nats(config.num_dims, config.n_bits)
        return bits_per_dim(log_py, config.num_dims, config.n_bits), log_px, *latents


class FlowMarginal(nn.Module):
    """A conditional flow's (uint8 images, offset) -> (bits/dim and log P(x)
    of the marginal P(x) = sum_y P(x|y) p(y), and log P(x|y) for every class
    (N, K)): one pass through the levels, the classes' priors and a
    logsumexp inside the graph."""

    def __init__(self, flow: MultiScaleFlow) -> None:
        super().__init__()
        self.flow = flow
        self.register_buffer("log_prior", flow.log_class_prior().cpu())

    def forward(self, images: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
        config = self.flow.config
        nats = discretization_nats(config.num_dims, config.n_bits)
        by_class = self.flow.class_log_probs(dequantize(images, config.n_bits, offset))
        log_py = torch.logsumexp(by_class + self.log_prior, 1)
        bpd = bits_per_dim(log_py, config.num_dims, config.n_bits)
        return bpd, log_py - nats, by_class - nats


def pixel_mapping(model: MultiScaleFlow) -> PixelMapping:
    """How the flow's floats y in [-0.5, 0.5] relate to uint8 pixels."""
    config = model.config
    bins = 2**config.n_bits
    return PixelMapping(
        n_bits=config.n_bits,
        value_range=[-0.5, 0.5],
        from_uint8=(
            f"y = (floor(x / {2 ** (8 - config.n_bits)}) + offset) / {bins} - 0.5, "
            "offset in [0, 1) (0.5: bin centres)"
        ),
        to_uint8=f"x = round(clip(floor((y + 0.5) * {bins}), 0, {bins - 1}) "
        f"* {255 / (bins - 1):g})",
        discretization_nats=discretization_nats(config.num_dims, config.n_bits),
    )


def _latents(model: MultiScaleFlow) -> list[TensorSpec]:
    return [
        TensorSpec(latent_name(i), "float32", [BATCH, *s], f"standard-normal latent of level {i}")
        for i, s in enumerate(model.config.latent_shapes())
    ]


def _images(model: MultiScaleFlow, n: int, generator: torch.Generator) -> tuple:
    """(uint8 samples of the model, their labels if conditional): plausible
    inputs of a density graph."""
    noise = [torch.randn(n, *s, generator=generator) for s in model.config.latent_shapes()]
    labels = label_feeds(model.num_classes, n, generator)
    with torch.no_grad():
        temperature = torch.full((n,), model.default_temperature)
        _, pixels = FlowGenerate(model)(noise, temperature, *labels)
    return pixels, labels


OFFSET_SPEC = (
    "dequantisation offset in [0, 1) per pixel; uniform noise gives the variational bound "
    "(what genrun scores), 0.5 the density at bin centres (`gentrain eval`'s "
    "bpd_density_at_centers, not a bound)"
)


def generate_graph(model: MultiScaleFlow, fold: bool = True) -> Graph:
    """(noise per level, temperature[, label]) -> images and pixels, on the
    frozen flow."""
    config = model.config
    shape = [BATCH, *config.data_shape]
    noise = [
        TensorSpec(noise_name(i), "float32", spec.shape, f"N(0, I) noise of level {i}")
        for i, spec in enumerate(_latents(model))
    ]

    def generate_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        drawn = [torch.randn(n, *s, generator=generator) for s in config.latent_shapes()]
        return (
            drawn,
            torch.rand(n, generator=generator),
            *label_feeds(model.num_classes, n, generator),
        )

    return Graph(
        role=GENERATE,
        module=FlowGenerate(freeze_flow(model, fold)),
        reference=FlowGenerate(model),
        inputs=[
            *noise,
            TensorSpec(TEMPERATURE, "float32", [BATCH], "per-sample scale of the noise"),
            *label_input(model.num_classes, "sample"),
        ],
        outputs=[
            TensorSpec(IMAGES, "float32", shape, "continuous images y, see pixels"),
            TensorSpec(PIXELS, "uint8", shape, "images quantised to uint8"),
        ],
        sample_inputs=generate_inputs,
        checks={IMAGES: "image", PIXELS: "pixels"},
        num_dims=config.num_dims,
        pixel_bits=config.n_bits,
        temperature=TEMPERATURE_EFFECT,
    )


def density_graph(model: MultiScaleFlow, fold: bool = True) -> Graph:
    """uint8 images (and offset[, label]) -> bits/dim, log P(x) (a conditional
    flow's P(x | label)), latents, on the frozen flow."""
    config = model.config
    shape = [BATCH, *config.data_shape]
    latents = _latents(model)

    def density_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        pixels, labels = _images(model, n, generator)
        return pixels, torch.rand(n, *config.data_shape, generator=generator), *labels

    of = " given its label" if model.num_classes else ""
    return Graph(
        role=DENSITY,
        module=FlowDensity(freeze_flow(model, fold)),
        reference=FlowDensity(model),
        inputs=[
            TensorSpec(IMAGES, "uint8", shape, "images to score"),
            TensorSpec(OFFSET, "float32", shape, OFFSET_SPEC, default=0.5),
            *label_input(model.num_classes, "image"),
        ],
        outputs=[
            TensorSpec(BITS_PER_DIM, "float32", [BATCH], f"bits/dim incl. discretisation{of}"),
            TensorSpec(
                LOG_LIKELIHOOD, "float32", [BATCH], f"log P(x) in nats of the uint8 image{of}"
            ),
            *latents,
        ],
        sample_inputs=density_inputs,
        checks={
            BITS_PER_DIM: "bpd",
            LOG_LIKELIHOOD: "nats",
            **{spec.name: "latent" for spec in latents},
        },
        num_dims=config.num_dims,
        pixel_bits=config.n_bits,
    )


def marginal_graph(model: MultiScaleFlow, fold: bool = True) -> Graph:
    """A conditional flow's density engine of the marginal P(x) = sum_y
    P(x|y) p(y): uint8 images (and offset) -> bits/dim, log P(x) and log P(x|y)
    for every class (what `genrun classify` reads), on the frozen flow. Its
    role is density: it scores images with no label."""
    if not model.num_classes:
        raise UserError(
            "the marginal density engine is for class-conditional flows; train one with "
            f"`gentrain fit {model.family} --conditional`, or drop --marginal"
        )
    config = model.config
    shape, k = [BATCH, *config.data_shape], model.num_classes

    def marginal_inputs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        pixels, _ = _images(model, n, generator)
        return pixels, torch.rand(n, *config.data_shape, generator=generator)

    return Graph(
        role=DENSITY,
        module=FlowMarginal(freeze_flow(model, fold)),
        reference=FlowMarginal(model),
        inputs=[
            TensorSpec(IMAGES, "uint8", shape, "images to score"),
            TensorSpec(OFFSET, "float32", shape, OFFSET_SPEC, default=0.5),
        ],
        outputs=[
            TensorSpec(
                BITS_PER_DIM,
                "float32",
                [BATCH],
                "bits/dim of the marginal P(x) = sum_y P(x|y) p(y)",
            ),
            TensorSpec(
                LOG_LIKELIHOOD, "float32", [BATCH], "log P(x) in nats of the uint8 image, marginal"
            ),
            TensorSpec(
                CLASS_LOG_LIKELIHOOD,
                "float32",
                [BATCH, k],
                "log P(x|y) in nats for every class y (add log p(y), the manifest's "
                "classes' log_prior, for log P(x, y))",
            ),
        ],
        sample_inputs=marginal_inputs,
        checks={BITS_PER_DIM: "bpd", LOG_LIKELIHOOD: "nats", CLASS_LOG_LIKELIHOOD: "nats"},
        num_dims=config.num_dims,
        pixel_bits=config.n_bits,
    )
