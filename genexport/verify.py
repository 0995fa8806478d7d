"""Parity: run an engine in ONNX Runtime on seeded inputs and compare every
output with a reference (PyTorch, or the float32 graph for a float16 one).

Tolerances by kind of output, per precision, judging what a user sees:

- "pixels" (uint8) may differ by the levels an image error within its bound
  can cross at a bin edge: one level in float32.
- "bpd": 1e-4 bits/dim in float32; log-likelihoods in nats ("nats") are held
  to the same bound in bits/dim (their size grows with the number of pixels D,
  and so does float32 rounding).
- "image": 1e-4, or CONDITIONING_FACTOR times the reference's own float32
  rounding (max |float32 - float64| of the PyTorch model on the same inputs),
  whichever is larger. A flow's reverse amplifies rounding where the model is
  ill-conditioned (a trained Glow's reverse turns 1e-7 into 1e-3); an engine
  is faithful when its error is of the order PyTorch's own is. Both figures
  are recorded in the manifest (`max_abs_error`, `conditioning`).
- Equal values agree, infinities included; a value finite on one side only is
  a miss, reported with the input that produced it.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime
import torch
from torch.utils import _pytree as pytree

from genrun.manifest import IMAGES, LABEL, TEMPERATURE, Parity
from gentrain.models.quantization import dequantize

from .graphs import Graph, nats_per_bpd

BATCH_SIZES = (1, 7, 64)
# A flow sample whose images leave [-0.5, 0.5] by this much (or are not finite)
# has diverged: the reverse flow overflowed (early in training, at T near 1).
DIVERGED = 1e4
SEED = 0
PYTORCH, ONNX_FLOAT32 = "pytorch-float32", "onnx-float32"
# The engine may differ from PyTorch by this many times PyTorch's own rounding.
CONDITIONING_FACTOR = 10.0
MAX_MISSES = 3  # one-sided non-finite values reported per output
TOLERANCES = {
    "fp32": {"image": 1e-4, "bpd": 1e-4, "latent": 1e-4},
    "fp16": {"image": 2e-2, "bpd": 1e-2, "latent": 5e-2},
}
Outputs = dict[str, np.ndarray]


def tolerance(
    graph: Graph, kind: str, precision: str, scale: float = 1.0, rounding: float = 0.0
) -> float:
    """The bound for one output; `scale` is the largest |value| the reference
    produced. Latents of a trained flow reach tens (outlier pixels), and float32
    rounding through a deep flow grows with them: their bound is relative to
    that scale (and absolute below 1). `rounding` is the reference's own float32
    error on the same inputs (images only)."""
    bounds = TOLERANCES[precision]
    if kind == "image":
        return max(bounds["image"], CONDITIONING_FACTOR * rounding)
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
    default are also left out once, against the reference fed the default.
    Against PyTorch, image outputs also get the reference's own float32
    rounding (its conditioning) measured against a float64 copy."""
    errors = {name: 0.0 for name in graph.checks}
    scales = {name: 0.0 for name in graph.checks}
    images = [name for name, kind in graph.checks.items() if kind == "image"]
    float64 = _float64_copy(graph) if reference is None and images else None
    rounding = {name: 0.0 for name in images} if float64 is not None else {}
    misses: list[str] = []
    for n in batch_sizes:
        inputs = graph.sample_inputs(n, torch.Generator().manual_seed(SEED + n))
        expected = _expected(graph, reference, inputs)
        where = f"batch of {n}, seed {SEED + n}"
        got = run(engine, graph, inputs)
        _accumulate(errors, *_without_diverged(graph, got, expected))
        misses += _one_sided(graph, got, expected, where)
        for name in scales:
            scales[name] = max(scales[name], _finite_max(expected[name]))
        if float64 is not None:
            exact = _run_float64(graph, float64, inputs)
            for name in rounding:
                rounding[name] = max(rounding[name], _rounding(graph, expected, exact, name))
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
            name: tolerance(graph, kind, precision, scales[name], rounding.get(name, 0.0))
            for name, kind in graph.checks.items()
        },
        conditioning=rounding,
        misses=_first(misses),
    )


def round_trip(
    density: Graph,
    density_engine: onnxruntime.InferenceSession,
    generate: Graph,
    generate_engine: onnxruntime.InferenceSession,
    precision: str,
) -> Parity:
    """uint8 images -> density latents (bin centres) -> generate at
    temperature 1 -> the images' bin centres again, all in ONNX Runtime. The
    images' bound scales with the same round trip's error in PyTorch float32
    (recorded as its conditioning); the pixels must come back within a level."""
    errors = {"round_trip.images": 0.0, "round_trip.pixels": 0.0}
    own = 0.0  # PyTorch float32's round-trip error on the same images
    misses: list[str] = []
    for n in BATCH_SIZES:
        # A conditional flow's inputs end with labels: both graphs get the same.
        pixels, offset, *labels = density.sample_inputs(n, torch.Generator().manual_seed(SEED + n))
        label = {LABEL: labels[0].numpy()} if labels else {}
        latents = density_engine.run(_latent_names(density), {IMAGES: pixels.numpy(), **label})
        noise = [spec.name for spec in generate.inputs if spec.name not in (TEMPERATURE, LABEL)]
        feeds = {**dict(zip(noise, latents, strict=True)), **label}
        images, back = generate_engine.run(None, {**feeds, TEMPERATURE: np.ones(n, np.float32)})
        centres = dequantize(pixels, generate.pixel_bits).numpy()
        got = {"round_trip.images": images, "round_trip.pixels": back}
        want = {"round_trip.images": centres, "round_trip.pixels": pixels.numpy()}
        _accumulate(errors, got, want)
        misses += _one_sided(generate, got, want, f"images of batch {n}, seed {SEED + n}")
        with torch.no_grad():
            centre = torch.full_like(offset, 0.5)
            _, _, *reference_latents = density.reference(pixels, centre, *labels)
            y, _ = generate.reference(reference_latents, torch.ones(n), *labels)
        own = max(own, _max_abs(y.numpy(), centres))
    return Parity(
        precision=precision,
        reference="input images",
        batch_sizes=list(BATCH_SIZES),
        max_abs_error=errors,
        tolerance={
            "round_trip.images": tolerance(generate, "image", precision, rounding=own),
            "round_trip.pixels": tolerance(generate, "pixels", precision),
        },
        conditioning={"round_trip.images": own},
        misses=_first(misses),
    )


def merge(first: Parity, second: Parity) -> Parity:
    """One record of two comparisons of the same engine."""
    return Parity(
        precision=first.precision,
        reference=first.reference,
        batch_sizes=first.batch_sizes,
        max_abs_error={**first.max_abs_error, **second.max_abs_error},
        tolerance={**first.tolerance, **second.tolerance},
        conditioning={**first.conditioning, **second.conditioning},
        misses=first.misses + second.misses,
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


def _without_diverged(
    graph: Graph, got: Outputs, want: Outputs, return_kept: bool = False
) -> tuple[Outputs, Outputs] | tuple[None, np.ndarray | None]:
    """Both outputs less the samples whose reference images diverged, when the
    engine's diverged too: an overflowing sample is the model's, not the
    export's, and its values (inf, or 1e30 against 3e30) say nothing about parity.
    A sample that diverges on one side only stays in, and fails."""
    images = [name for name, kind in graph.checks.items() if kind == "image"]
    if not images or images[0] not in got:
        return (None, None) if return_kept else (got, want)
    name = images[0]
    diverged_want, diverged_got = _diverged(want[name]), _diverged(got[name])
    if not diverged_want.any() or not np.array_equal(diverged_want, diverged_got):
        return (None, None) if return_kept else (got, want)
    keep = ~diverged_want
    if return_kept:
        return None, keep
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


def _float64_copy(graph: Graph) -> torch.nn.Module:
    """The reference module in float64: what the model computes without rounding."""
    return copy.deepcopy(graph.reference).double()


def _run_float64(graph: Graph, module: torch.nn.Module, inputs: tuple) -> Outputs:
    leaves, spec = pytree.tree_flatten(inputs)
    doubled = [leaf.double() if leaf.is_floating_point() else leaf for leaf in leaves]
    with torch.no_grad():
        outputs = pytree.tree_leaves(module(*pytree.tree_unflatten(doubled, spec)))
    return {s.name: t.numpy() for s, t in zip(graph.outputs, outputs, strict=True)}


def _rounding(graph: Graph, float32: Outputs, float64: Outputs, name: str) -> float:
    """max |float32 - float64| of one image output over the samples that stay
    finite and within DIVERGED in both (a diverged sample's rounding is moot)."""
    a, b = float32[name].astype(np.float64), float64[name]
    keep = ~(_diverged(a) | _diverged(b))
    return _max_abs(a[keep], b[keep]) if keep.any() else 0.0


def _one_sided(graph: Graph, got: Outputs, want: Outputs, where: str) -> list[str]:
    """'name: engine inf, reference -812 at sample i (where)' for each value
    that is finite on one side only; samples whose images diverged in both are
    left out, as in the comparison."""
    _, keep = _without_diverged(graph, got, want, return_kept=True)
    misses = []
    for name in [name for name in got if name in want]:
        g, w = got[name], want[name]
        if g.shape != w.shape or g.ndim == 0:
            continue
        if keep is not None and len(g) == len(keep):
            g, w = g[keep], w[keep]
            index = np.flatnonzero(keep)
        else:
            index = np.arange(len(g))
        with np.errstate(invalid="ignore"):
            mismatch = np.isfinite(g) != np.isfinite(w)
            mismatch |= ~np.isfinite(g) & ~np.isfinite(w) & ~(g == w)  # inf vs -inf, NaN
        rows = mismatch.reshape(len(g), -1).any(axis=1)
        for i in np.flatnonzero(rows)[:1]:  # the first sample per output
            flat_g, flat_w = g[i].reshape(-1), w[i].reshape(-1)
            j = int(np.flatnonzero(mismatch[i].reshape(-1))[0])
            misses.append(
                f"{name}: engine {flat_g[j]:.4g}, reference {flat_w[j]:.4g} at input sample "
                f"{int(index[i])} ({where})"
            )
    return misses


def _first(misses: list[str]) -> list[str]:
    return misses[:MAX_MISSES]


def _finite_max(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max(initial=0.0))


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
