"""Parity: run an engine in ONNX Runtime on seeded inputs and compare every
output with a reference (PyTorch, or the float32 graph for a float16 one).

Tolerances by kind of output, per precision. "image" and "bpd" are the issue's
bounds (1e-4 in float32); log-likelihoods in nats are held to the same bound
in bits/dim (their size grows with the number of pixels D, and so does
float32 rounding); "pixels" may differ by the uint8 levels that an image error
within its bound can cross at a bin edge (one level in float32).
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import torch
from torch.utils import _pytree as pytree

from genrun.manifest import IMAGES, TEMPERATURE, Parity
from gentrain.models.quantization import dequantize

from .graphs import Graph, nats_per_bpd

BATCH_SIZES = (1, 7, 64)
# A flow sample whose images leave [-0.5, 0.5] by this much (or are not finite)
# has diverged: the reverse flow overflowed (early in training, at T near 1).
DIVERGED = 1e4
SEED = 0
PYTORCH, ONNX_FLOAT32 = "pytorch-float32", "onnx-float32"
TOLERANCES = {
    "fp32": {"image": 1e-4, "bpd": 1e-4, "latent": 1e-4},
    "fp16": {"image": 2e-2, "bpd": 1e-2, "latent": 5e-2},
}
Outputs = dict[str, np.ndarray]


def tolerance(graph: Graph, kind: str, precision: str, scale: float = 1.0) -> float:
    """The bound for one output; `scale` is the largest |value| the reference
    produced. Latents of a trained flow reach tens (outlier pixels), and float32
    rounding through a deep flow grows with them: their bound is relative to
    that scale (and absolute below 1)."""
    bounds = TOLERANCES[precision]
    if kind == "latent":
        return bounds["latent"] * max(1.0, scale)
    if kind == "nats":
        return bounds["bpd"] * nats_per_bpd(graph.num_dims)
    if kind == "pixels":
        # The uint8 levels an image error within its bound can cross at a bin edge.
        bins = 2**graph.pixel_bits
        return 255 / (bins - 1) * float(np.ceil(bounds["image"] * bins))
    return bounds[kind]


def run(session: onnxruntime.InferenceSession, graph: Graph, inputs: tuple) -> Outputs:
    """Feed a graph's inputs (as its module takes them) to a session."""
    leaves = pytree.tree_leaves(inputs)
    feeds = {spec.name: tensor.numpy() for spec, tensor in zip(graph.inputs, leaves, strict=True)}
    names = [spec.name for spec in graph.outputs]
    return dict(zip(names, session.run(names, feeds), strict=True))


def run_reference(graph: Graph, inputs: tuple) -> Outputs:
    with torch.no_grad():
        outputs = pytree.tree_leaves(graph.reference(*inputs))
    names = [spec.name for spec in graph.outputs]
    return {name: t.numpy() for name, t in zip(names, outputs, strict=True)}


def parity(
    graph: Graph,
    engine: onnxruntime.InferenceSession,
    precision: str,
    reference: onnxruntime.InferenceSession | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> Parity:
    """Max abs error of every output over seeded inputs at each batch size,
    against PyTorch or, given `reference`, another session. Inputs with a
    default are also left out once, against the reference fed the default."""
    errors = {name: 0.0 for name in graph.checks}
    scales = {name: 0.0 for name in graph.checks}
    for n in batch_sizes:
        inputs = graph.sample_inputs(n, torch.Generator().manual_seed(SEED + n))
        expected = _expected(graph, reference, inputs)
        _accumulate(errors, *_without_diverged(graph, run(engine, graph, inputs), expected))
        for name in scales:
            scales[name] = max(scales[name], float(np.abs(expected[name]).max(initial=0.0)))
        defaulted = _fill_defaults(graph, inputs)
        if defaulted is not None:
            feeds = {
                spec.name: tensor.numpy()
                for spec, tensor in zip(graph.inputs, pytree.tree_leaves(inputs), strict=True)
                if spec.default is None
            }
            got = dict(zip(graph.checks, engine.run(list(graph.checks), feeds), strict=True))
            _accumulate(
                errors, *_without_diverged(graph, got, _expected(graph, reference, defaulted))
            )
    return Parity(
        precision=precision,
        reference=PYTORCH if reference is None else ONNX_FLOAT32,
        batch_sizes=list(batch_sizes),
        max_abs_error=errors,
        tolerance={
            name: tolerance(graph, kind, precision, scales[name])
            for name, kind in graph.checks.items()
        },
    )


def round_trip(
    density: Graph,
    density_engine: onnxruntime.InferenceSession,
    generate: Graph,
    generate_engine: onnxruntime.InferenceSession,
    precision: str,
) -> Parity:
    """uint8 images -> density latents (bin centres) -> generate at
    temperature 1 -> the images' bin centres again, all in ONNX Runtime."""
    errors = {"round_trip.images": 0.0, "round_trip.pixels": 0.0}
    for n in BATCH_SIZES:
        pixels, _ = density.sample_inputs(n, torch.Generator().manual_seed(SEED + n))
        latents = density_engine.run(_latent_names(density), {IMAGES: pixels.numpy()})
        noise = [spec.name for spec in generate.inputs if spec.name != TEMPERATURE]
        feeds = dict(zip(noise, latents, strict=True))
        images, back = generate_engine.run(None, {**feeds, TEMPERATURE: np.ones(n, np.float32)})
        centres = dequantize(pixels, generate.pixel_bits).numpy()
        _accumulate(
            errors,
            {"round_trip.images": images, "round_trip.pixels": back},
            {"round_trip.images": centres, "round_trip.pixels": pixels.numpy()},
        )
    return Parity(
        precision=precision,
        reference="input images",
        batch_sizes=list(BATCH_SIZES),
        max_abs_error=errors,
        tolerance={
            "round_trip.images": tolerance(generate, "image", precision),
            "round_trip.pixels": tolerance(generate, "pixels", precision),
        },
    )


def merge(first: Parity, second: Parity) -> Parity:
    """One record of two comparisons of the same engine."""
    return Parity(
        precision=first.precision,
        reference=first.reference,
        batch_sizes=first.batch_sizes,
        max_abs_error={**first.max_abs_error, **second.max_abs_error},
        tolerance={**first.tolerance, **second.tolerance},
    )


def _expected(
    graph: Graph, reference: onnxruntime.InferenceSession | None, inputs: tuple
) -> Outputs:
    return run_reference(graph, inputs) if reference is None else run(reference, graph, inputs)


def _latent_names(density: Graph) -> list[str]:
    return [spec.name for spec in density.outputs if spec.name.startswith("latent_")]


def _fill_defaults(graph: Graph, inputs: tuple) -> tuple | None:
    """`inputs` with every defaulted input replaced by its default, or None."""
    leaves, spec = pytree.tree_flatten(inputs)
    if all(s.default is None for s in graph.inputs):
        return None
    filled = [
        torch.full_like(leaf, s.default) if s.default is not None else leaf
        for s, leaf in zip(graph.inputs, leaves, strict=True)
    ]
    return pytree.tree_unflatten(filled, spec)


def _without_diverged(graph: Graph, got: Outputs, want: Outputs) -> tuple[Outputs, Outputs]:
    """Both outputs less the samples whose reference images diverged, when the
    engine's diverged too: an overflowing sample is the model's, not the
    export's, and its values (inf, or 1e30 against 3e30) say nothing about parity.
    A sample that diverges on one side only stays in, and fails."""
    images = [name for name, kind in graph.checks.items() if kind == "image"]
    if not images:
        return got, want
    name = images[0]
    diverged_want, diverged_got = _diverged(want[name]), _diverged(got[name])
    if not diverged_want.any() or not np.array_equal(diverged_want, diverged_got):
        return got, want
    keep = ~diverged_want
    pixelwise = {n for n, kind in graph.checks.items() if kind in ("image", "pixels")}
    return (
        {n: v[keep] if n in pixelwise else v for n, v in got.items()},
        {n: v[keep] if n in pixelwise else v for n, v in want.items()},
    )


def _diverged(images: np.ndarray) -> np.ndarray:
    """Per sample: any value non-finite or beyond DIVERGED."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.abs(flat) <= DIVERGED).all(axis=1)


def _accumulate(errors: dict[str, float], got: Outputs, want: Outputs) -> None:
    for name in errors:
        errors[name] = max(errors[name], _max_abs(got[name], want[name]))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """NaN and shape mismatches count as infinite, so they fail every bound.
    Equal values agree, infinities included: a barely trained flow can sample
    inf at high temperature, and an engine that does the same is faithful."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        difference = np.where(a == b, 0.0, np.abs(a - b))
    error = float(difference.max(initial=0.0))
    return float("inf") if np.isnan(error) else error
