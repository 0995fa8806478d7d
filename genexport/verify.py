"""Parity: run an engine in ONNX Runtime on seeded inputs and compare every
output with a reference (PyTorch, or the float32 graph for a float16 one),
with genrun's one comparator (genrun/compare.py: its rules for NaN,
infinities, diverged samples and misses). `TorchRunner` is the PyTorch side:
a runner like genrun's, around a graph's reference module.

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
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch.utils import _pytree as pytree

from genrun.backends.onnxruntime import OnnxRuntimeRunner
from genrun.compare import (
    Case,
    Diverged,
    Outputs,
    RoundTrip,
    compare,
    diverged_samples,
    max_abs,
    merge,
)
from genrun.manifest import BATCH, IMAGES, LABEL, Parity
from gentrain.models.quantization import dequantize

from .graphs import Graph, nats_per_bpd

__all__ = ["BATCH_SIZES", "TOLERANCES", "TorchRunner", "merge", "parity", "round_trip"]

BATCH_SIZES = (1, 7, 64)
SEED = 0
MEMO_CALLS = 2 * len(BATCH_SIZES)  # the calls of one parity check a TorchRunner remembers
PYTORCH, ONNX_FLOAT32 = "pytorch-float32", "onnx-float32"
# The engine may differ from PyTorch by this many times PyTorch's own rounding.
CONDITIONING_FACTOR = 10.0
TOLERANCES = {
    "fp32": {"image": 1e-4, "bpd": 1e-4, "latent": 1e-4},
    "fp16": {"image": 2e-2, "bpd": 1e-2, "latent": 5e-2},
}


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


class TorchRunner:
    """A graph's PyTorch reference module as a runner: `run(feeds)` takes the
    graph's inputs by name (numpy; an input with a default may be left out and
    gets it) and returns every output by name. `float64` runs a float64 copy:
    what the model computes without float32 rounding."""

    def __init__(self, graph: Graph, float64: bool = False):
        self.graph, self.float64 = graph, float64
        self.inputs, self.outputs = graph.inputs, graph.outputs
        self.module = copy.deepcopy(graph.reference).double() if float64 else graph.reference
        # How the module takes its inputs (a tuple, lists of noise): one example's structure.
        example = graph.sample_inputs(1, torch.Generator().manual_seed(0))
        self.structure = pytree.tree_flatten(example)[1]
        # id(feeds) -> (feeds, outputs): parity's rounding probe and its
        # comparison run the same feeds; the feeds are held, so ids stay unique.
        self._seen: dict[int, tuple[Outputs, Outputs]] = {}

    def run(self, feeds: Outputs) -> Outputs:
        if id(feeds) in self._seen:
            return self._seen[id(feeds)][1]
        batch = len(next(iter(feeds.values())))
        leaves = []
        for spec in self.graph.inputs:
            value = feeds.get(spec.name)
            if value is None:
                shape = [batch if d == BATCH else d for d in spec.shape]
                value = np.full(shape, spec.default, spec.dtype)
            leaf = torch.from_numpy(np.asarray(value))
            leaves.append(leaf.double() if self.float64 and leaf.is_floating_point() else leaf)
        with torch.no_grad():
            outputs = pytree.tree_leaves(
                self.module(*pytree.tree_unflatten(leaves, self.structure))
            )
        result = {s.name: t.numpy() for s, t in zip(self.graph.outputs, outputs, strict=True)}
        if len(self._seen) < MEMO_CALLS:
            self._seen[id(feeds)] = (feeds, result)
        return result


def session_runner(session: onnxruntime.InferenceSession, graph: Graph) -> OnnxRuntimeRunner:
    """A genrun runner of an in-memory session, with the graph's own specs."""
    return OnnxRuntimeRunner(
        session, Path(f"<{graph.role} graph>"), specs=(graph.inputs, graph.outputs)
    )


def diverged_rule(graph: Graph) -> Diverged | None:
    """A flow's first image output says which samples diverged; every image
    and pixel output leaves them out with it."""
    images = [name for name, kind in graph.checks.items() if kind == "image"]
    if not images:
        return None
    pixelwise = {n for n, kind in graph.checks.items() if kind in ("image", "pixels")}
    return Diverged(images[0], pixelwise)


def cases(graph: Graph, batch_sizes: tuple[int, ...], defaults: bool = True) -> list[Case]:
    """Seeded inputs at each batch size; with `defaults`, after each one the
    same inputs with every defaulted input left out (the reference fed the
    defaults), when the graph has such inputs."""
    found = []
    defaulted = [s for s in graph.inputs if s.default is not None]
    for n in batch_sizes:
        leaves = pytree.tree_leaves(graph.sample_inputs(n, torch.Generator().manual_seed(SEED + n)))
        feeds = {spec.name: t.numpy() for spec, t in zip(graph.inputs, leaves, strict=True)}
        found.append(Case(f"batch of {n}, seed {SEED + n}", feeds))
        if defaults and defaulted:
            left = {k: v for k, v in feeds.items() if k not in {s.name for s in defaulted}}
            filled = {
                **feeds,
                **{s.name: np.full_like(feeds[s.name], s.default) for s in defaulted},
            }
            found.append(Case(f"batch of {n}, defaults", left, reference_feeds=filled))
    return found


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
    checked = cases(graph, batch_sizes)
    against = TorchRunner(graph) if reference is None else session_runner(reference, graph)
    images = [name for name, kind in graph.checks.items() if kind == "image"]
    rounding: dict[str, float] = {}
    if reference is None and images:
        rounding = _rounding(TorchRunner(graph, float64=True), against, checked, images)
    bounds = {
        name: lambda scale, kind=kind, name=name: tolerance(
            graph, kind, precision, scale, rounding.get(name, 0.0)
        )
        for name, kind in graph.checks.items()
    }
    return compare(
        against,
        session_runner(engine, graph),
        checked,
        bounds,
        precision=precision,
        reference_name=PYTORCH if reference is None else ONNX_FLOAT32,
        batch_sizes=batch_sizes,
        diverged=diverged_rule(graph),
        conditioning=rounding,
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
    trips = []
    for n in BATCH_SIZES:
        # A conditional flow's inputs end with labels: both graphs get the same.
        pixels, _, *labels = density.sample_inputs(n, torch.Generator().manual_seed(SEED + n))
        feeds = {IMAGES: pixels.numpy(), **({LABEL: labels[0].numpy()} if labels else {})}
        trips.append(Case(f"images of batch {n}, seed {SEED + n}", feeds))
    inputs = InputImages(generate.pixel_bits)
    own = compare(
        inputs,
        RoundTrip(TorchRunner(density), TorchRunner(generate)),
        trips,
        {"round_trip.images": 0.0},
        precision=precision,
        reference_name="input images",
        batch_sizes=BATCH_SIZES,
    ).max_abs_error["round_trip.images"]  # PyTorch float32's round-trip error
    engines = RoundTrip(
        session_runner(density_engine, density), session_runner(generate_engine, generate)
    )
    return compare(
        inputs,
        engines,
        trips,
        {
            "round_trip.images": tolerance(generate, "image", precision, rounding=own),
            "round_trip.pixels": tolerance(generate, "pixels", precision),
        },
        precision=precision,
        reference_name="input images",
        batch_sizes=BATCH_SIZES,
        conditioning={"round_trip.images": own},
    )


class InputImages:
    """The reference of a round trip: the input pixels and their bin centres."""

    def __init__(self, pixel_bits: int):
        self.pixel_bits = pixel_bits

    def run(self, feeds: Outputs) -> Outputs:
        pixels = feeds[IMAGES]
        centres = dequantize(torch.from_numpy(pixels), self.pixel_bits).numpy()
        return {"round_trip.images": centres, "round_trip.pixels": pixels}


def _rounding(
    float64: TorchRunner, float32: TorchRunner, checked: list[Case], images: list[str]
) -> dict[str, float]:
    """Per image output, max |float32 - float64| of the reference over the
    samples that stay finite and within DIVERGED in both (a diverged sample's
    rounding is moot), over the cases with their own feeds."""
    rounding = dict.fromkeys(images, 0.0)
    for case in checked:
        if case.reference_feeds is not None:
            continue
        a32, a64 = float32.run(case.feeds), float64.run(case.feeds)
        for name in images:
            a, b = a32[name].astype(np.float64), a64[name]
            keep = ~(diverged_samples(a) | diverged_samples(b))
            if keep.any():
                rounding[name] = max(rounding[name], max_abs(a[keep], b[keep]))
    return rounding
