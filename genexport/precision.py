"""bfloat16 engines: float32 graph -> a graph whose chosen layers compute in
bfloat16, chosen by measuring each layer's effect on parity in the user's
terms (`genexport onnx --precision bf16`).

Why this path (measured, benchmarks/results/precision-cpu.md): on x86 CPUs
with AMX / AVX512-BF16, OpenVINO runs bfloat16 convolutions on oneDNN's AMX
kernels; ONNX Runtime's CPU provider has no bfloat16 convolution, and its
int8 (QDQ) graphs ran slower than float32 here, as did OpenVINO's. OpenVINO's
own bf16 hint lowers every node, which fails parity; so the graph states its
precision itself: each chosen region (convolutions and matrix products, with
the ReLUs between them, which are exact in any precision) takes bfloat16
inputs and weights through explicit Casts and hands float32 back; everything
else (exponentials, divisions by coupling scales, log-determinants, priors,
the uint8 mapping) stays float32. genrun runs it with OpenVINO's f32 hint, so
exactly this graph runs.

Parity in the user's terms, against the float32 graph (ONNX Runtime):
- generate / decode: uint8 pixels within one level of float32's for at least
  99.9% of the pixels of SAMPLES seeded samples at each of TEMPERATURES, and
  no non-finite image value where float32's is finite;
- density: bits/dim within BPD_BOUND of float32's for every one of up to
  TEST_IMAGES test images (seeded dequantisation offsets), no non-finite
  bits/dim, and the typicality AUROC of test images against each synthetic
  out-of-distribution set unchanged within AUROC_BOUND.

Choosing the layers: all regions in bfloat16 first; if a figure misses its
bound, each region alone in bfloat16 is measured (on a quarter of the inputs)
and the regions are taken from the least to the most harmful, the longest
prefix that passes (bisection, each step checked in full) computing in
bfloat16. If that leaves too little, the regions that missed by at most
SPLIT_LIMIT times their bound are split into their layers and the search runs
again (one screening per layer, so only where a region came close). Fewer
than MIN_REDUCED_SHARE of the FLOPs in bfloat16 is a refusal that names the
regions over their bounds: the engine would not be worth it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from genrun.backends.onnxruntime import create_session, session_options
from genrun.backends.openvino import bf16_support, cpu_flags, load_openvino
from genrun.bench import time_calls
from genrun.errors import UserError
from genrun.flops import node_flops
from genrun.manifest import (
    BITS_PER_DIM,
    DECODE,
    DENSITY,
    GENERATE,
    IMAGES,
    OFFSET,
    PIXELS,
    TEMPERATURE,
    Parity,
    PrecisionPlan,
)
from genrun.ood import auroc, typicality

from .graphs import Graph
from .onnx import check_standard, session

BF16 = "bf16"
REFERENCE = "onnx-float32"
RUNTIME = "openvino"
CANDIDATE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # where the FLOPs are
PASS_THROUGH = ("Relu",)  # exact in bfloat16: joins the region of its input
BF16_OPSET = 22  # the first opset whose Conv takes bfloat16
PIXEL_ROLES = (GENERATE, DECODE)
DENSITY_ROLES = (DENSITY,)
SAMPLES = 1024
TEMPERATURES = (0.7, 1.0)
PIXEL_SHARE = 0.001  # at most this share of pixels more than one level off
TEST_IMAGES = 1000
BPD_BOUND = 0.01
AUROC_BOUND = 0.005
OOD_IMAGES = 250  # per synthetic out-of-distribution set
SCREEN = 4  # a region's own effect is measured on 1 / SCREEN of the inputs
MIN_REDUCED_SHARE = 0.5
MIN_SPEEDUP = 1.0  # a bf16 engine slower than the fp32 one on this CPU is not written
SPEED_ROUNDS = 3  # interleaved rounds of the speed check, 0.5 s of calls each per engine
SPLIT_LIMIT = 2.0  # a region alone within 2x of a bound is retried layer by layer
CHUNK = 256  # rows per call
SEED = 0
Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Region:
    """Nodes that compute in bfloat16 together: a chain of convolutions or
    matrix products joined by ReLUs (a coupling network, a decoder MLP)."""

    name: str  # its first node's
    nodes: list[str]
    flops: int


@dataclass
class Reduced:
    model: onnx.ModelProto
    parity: Parity
    plan: PrecisionPlan


def supported(role: str) -> bool:
    return role in PIXEL_ROLES or role in DENSITY_ROLES


def reduce_to_bf16(
    graph: Graph,
    fp32: onnx.ModelProto,
    data: tuple[np.ndarray, np.ndarray] | None,
    threads: int,
    min_speedup: float = MIN_SPEEDUP,
) -> Reduced:
    """The bf16 engine of a verified float32 graph, with its parity figures
    and plan; a UserError (nothing to write) where parity cannot be met with
    at least MIN_REDUCED_SHARE of the FLOPs in bfloat16, or where the engine
    runs under `min_speedup` times the float32 one's speed on this CPU (0:
    written whatever its speed). `data`: (training, test) uint8 images, which
    density graphs need."""
    why_not = bf16_support()
    if why_not:
        raise UserError(f"--precision bf16 is measured at export on this CPU, and {why_not}")
    if not supported(graph.role):
        raise UserError(
            f"--precision bf16 exports {', '.join(PIXEL_ROLES + DENSITY_ROLES)} graphs, not "
            f"'{graph.role}'; export it in fp32 (--graphs names the roles)"
        )
    fp32 = _named(fp32)
    judge = (
        PixelJudge(graph, fp32) if graph.role in PIXEL_ROLES else DensityJudge(graph, fp32, data)
    )
    regions = find_regions(fp32)
    if not regions:
        raise UserError(
            f"the {graph.role} graph has no {'/'.join(CANDIDATE_OPS)} node to run in bfloat16"
        )
    total = sum(region.flops for region in regions) or 1

    def measure(chosen: list[Region], screen: bool = False) -> tuple[onnx.ModelProto, dict]:
        model = to_bfloat16(fp32, {node for region in chosen for node in region.nodes})
        runner = load_openvino(model.SerializeToString(), threads, path=_Named(graph.role))
        try:
            return model, judge.figures(runner.run, screen)
        finally:
            runner.close()

    model, figures = measure(regions)
    effects: dict[str, float] = {}
    chosen = regions
    if _badness(figures, judge.bounds) > 1:
        regions, chosen, best = choose_regions(
            regions, measure, judge.bounds, effects, lambda: node_flops(fp32)
        )
        share = _share(chosen, total)
        if best is None or share < MIN_REDUCED_SHARE:
            left = sorted((r for r in regions if r not in chosen), key=lambda r: effects[r.name])
            failing = [r for r in left if effects[r.name] > 1] or left
            named = ", ".join(f"{r.name} ({effects[r.name]:.2g}x its bound)" for r in failing[:8])
            more = f" and {len(failing) - 8} more" if len(failing) > 8 else ""
            raise UserError(
                f"bf16 parity cannot be met for the {graph.role} graph, nothing written: in "
                f"bfloat16 the figures miss their bounds ({_misses(figures, judge.bounds)}); "
                f"layers over a bound alone: {named}{more}; keeping them in float32 leaves "
                f"{share:.0%} of the FLOPs in bfloat16 (< {MIN_REDUCED_SHARE:.0%}); export "
                "--precision fp32"
            )
        model, figures = best
    check_standard(model)
    speedup = measure_speedup(fp32, model, judge.speed_feeds, threads)
    if speedup < min_speedup:
        amx = "with" if "amx_bf16" in cpu_flags() else "without"
        raise UserError(
            f"the bf16 {graph.role} graph meets parity but runs at {speedup:.2f}x the fp32 "
            f"engine's speed on this CPU ({amx} AMX), nothing written: export --precision fp32 "
            "(or --bf16-min-speedup 0 to write it for a CPU where it pays)"
        )
    kept = [r for r in regions if r not in chosen]
    parity = Parity(
        precision=BF16,
        reference=REFERENCE,
        batch_sizes=[CHUNK],
        max_abs_error=figures,
        tolerance=dict(judge.bounds),
    )
    plan = PrecisionPlan(
        runtime=RUNTIME,
        reduced_layers=[r.name for r in chosen],
        float32_layers=[r.name for r in kept],
        reduced_flop_share=_share(chosen, total),
        layer_effects=effects,
        speedup=speedup,
    )
    return Reduced(model, parity, plan)


def measure_speedup(
    fp32: onnx.ModelProto, bf16: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int
) -> float:
    """The bf16 engine's speed on OpenVINO over the float32 engine's on ONNX
    Runtime (what genrun runs for each), on this CPU, at CHUNK rows: the
    median of per-round ratios of the median call, rounds interleaved so a
    load that comes and goes hits both alike (genrun.bench.time_calls)."""
    # Both on the same threads (ONNX Runtime's own default is the machine's
    # cores, whatever this process may run on).
    reference = create_session(fp32.SerializeToString(), options=session_options(threads))
    runner = load_openvino(bf16.SerializeToString(), threads, path=_Named("speed"))
    try:
        ratios = []
        for _ in range(SPEED_ROUNDS):
            fp32_s = float(np.median(time_calls(lambda: reference.run(None, feeds), 0.5)))
            bf16_s = float(np.median(time_calls(lambda: runner.run(feeds), 0.5)))
            ratios.append(fp32_s / bf16_s)
    finally:
        runner.close()
    return float(np.median(ratios))


def choose_regions(
    regions: list[Region],
    measure: Callable[..., tuple[onnx.ModelProto, dict]],
    bounds: dict[str, float],
    effects: dict[str, float],
    layer_flops: Callable[[], dict[str, int]],
) -> tuple[list[Region], list[Region], tuple[onnx.ModelProto, dict] | None]:
    """(the regions, those to compute in bfloat16, their measured model) when
    all of `regions` together miss a bound: the longest passing prefix, least
    harmful first; if that leaves under MIN_REDUCED_SHARE of the FLOPs, the
    regions that missed by at most SPLIT_LIMIT are split into their layers
    and the search runs again. A region that misses narrowly may pass without
    one of its layers (a VAE decoder: its first matrix product takes the
    latent in bfloat16 and costs the miss; the second holds 97% of the
    FLOPs); one far over is not worth a screening per layer."""
    total = sum(r.flops for r in regions) or 1
    order, n, best = _longest_passing(regions, measure, bounds, effects)
    near = [r for r in order[n:] if len(r.nodes) > 1 and effects[r.name] <= SPLIT_LIMIT]
    if not near or (best is not None and _share(order[:n], total) >= MIN_REDUCED_SHARE):
        return regions, order[:n], best
    flops = layer_flops()
    for region in near:  # named after its first layer, which now stands alone
        del effects[region.name]
    layers = [Region(name, [name], flops.get(name, 0)) for r in near for name in r.nodes]
    regions = [r for r in regions if r not in near] + layers
    order, n, best = _longest_passing(regions, measure, bounds, effects)
    return regions, order[:n], best


def _longest_passing(
    regions: list[Region],
    measure: Callable[..., tuple[onnx.ModelProto, dict]],
    bounds: dict[str, float],
    effects: dict[str, float],
) -> tuple[list[Region], int, tuple[onnx.ModelProto, dict] | None]:
    """(regions least harmful first, n, the measured model of the first n):
    the longest prefix that meets every bound, found by bisection. Each
    region's own effect (screened on 1 / SCREEN of the inputs) goes into
    `effects` once. The whole list is known to miss."""
    for region in regions:
        if region.name not in effects:
            effects[region.name] = _badness(measure([region], screen=True)[1], bounds)
    order = sorted(regions, key=lambda r: effects[r.name])
    best, lo, hi = None, 0, len(order) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = measure(order[:mid])
        if _badness(candidate[1], bounds) <= 1:
            lo, best = mid, candidate
        else:
            hi = mid - 1
    return order, lo, best


def _share(regions: list[Region], total: int) -> float:
    return sum(r.flops for r in regions) / total


def verify_bf16(
    graph: Graph,
    fp32: onnx.ModelProto,
    engine: Path,
    data: tuple[np.ndarray, np.ndarray] | None,
    threads: int,
) -> Parity:
    """The user-terms figures of a written bf16 engine against a float32
    graph of the same checkpoint (`genexport verify`)."""
    judge = (
        PixelJudge(graph, fp32) if graph.role in PIXEL_ROLES else DensityJudge(graph, fp32, data)
    )
    runner = load_openvino(engine, threads)
    try:
        figures = judge.figures(runner.run)
    finally:
        runner.close()
    return Parity(BF16, REFERENCE, [CHUNK], figures, dict(judge.bounds))


# -- the graph ---------------------------------------------------------------------
def find_regions(model: onnx.ModelProto) -> list[Region]:
    """Chains of CANDIDATE_OPS nodes joined through PASS_THROUGH nodes, in graph order."""
    flops = node_flops(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    region_of: dict[str, Region] = {}
    regions: list[Region] = []
    for node in model.graph.node:
        if node.op_type not in CANDIDATE_OPS + PASS_THROUGH:
            continue
        source = producer.get(node.input[0])
        joined = (
            region_of.get(source.name)
            if source is not None and source.op_type in PASS_THROUGH
            else None
        )
        if node.op_type in PASS_THROUGH:
            if source is not None and source.name in region_of:
                region_of[node.name] = region_of[source.name]
            continue
        if joined is None:
            joined = Region(node.name, [], 0)
            regions.append(joined)
        joined.nodes.append(node.name)
        joined.flops += flops.get(node.name, 0)
        region_of[node.name] = joined
    return regions


def to_bfloat16(model: onnx.ModelProto, reduced: set[str]) -> onnx.ModelProto:
    """A copy of `model` in which the nodes named in `reduced`, and the
    PASS_THROUGH nodes fed by them, compute in bfloat16: their float inputs
    are cast down once per tensor (initialisers stored as bfloat16), their
    outputs cast back to float32 where a float32 node or the graph reads them.
    Inputs with a default become plain inputs (the runner feeds the default)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = max(entry.version, BF16_OPSET)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    low: set[str] = set()
    for node in graph.node:
        fed = producer.get(node.input[0]) if node.input else None
        if node.name in reduced or (
            node.op_type in PASS_THROUGH and fed is not None and fed.name in low
        ):
            low.add(node.name)
    low_outputs = {out for node in graph.node if node.name in low for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    graph_outputs = {value.name for value in graph.output}
    nodes: list[onnx.NodeProto] = []
    lowered: dict[str, str] = {}

    def as_bf16(name: str) -> str:
        if name in low_outputs:
            return f"{name}__bf16"
        if name not in lowered:
            lowered[name] = f"{name}__to_bf16"
            if name in initializers:
                array = numpy_helper.to_array(initializers[name]).astype(np.float32)
                graph.initializer.append(_bf16_tensor(array, lowered[name]))
            else:
                cast = helper.make_node("Cast", [name], [lowered[name]], to=TensorProto.BFLOAT16)
                cast.name = lowered[name]
                nodes.append(cast)
        return lowered[name]

    for node in list(graph.node):
        if node.name not in low:
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name:
                node.input[i] = as_bf16(name)
        originals = list(node.output)
        for i, name in enumerate(originals):
            node.output[i] = f"{name}__bf16"
        nodes.append(node)
        for name in originals:
            if name in graph_outputs or any(r.name not in low for r in readers.get(name, [])):
                cast = helper.make_node("Cast", [f"{name}__bf16"], [name], to=TensorProto.FLOAT)
                cast.name = f"{name}__to_float"
                nodes.append(cast)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    inputs = {value.name for value in graph.input}
    # An input's default (an initialiser of its name) would be a constant to
    # OpenVINO: the input stays an input, and genrun's runner feeds the default.
    kept = [init for init in graph.initializer if init.name in used and init.name not in inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    return model


def _bf16_tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    """bfloat16 initialiser, rounded to nearest even (as Cast rounds)."""
    bits = array.astype(np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    tensor = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=list(array.shape))
    tensor.raw_data = rounded.tobytes()
    return tensor


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every node named, uniquely (the plan names regions by node)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


class _Named(str):
    """A path-like name for messages about an in-memory graph."""

    @property
    def name(self) -> str:
        return f"the {self} graph"


# -- the figures -------------------------------------------------------------------
def _run_chunks(run: Run, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    rows = len(next(iter(feeds.values())))
    parts = [
        run({k: v[start : start + CHUNK] for k, v in feeds.items()})
        for start in range(0, rows, CHUNK)
    ]
    return [np.concatenate([part[name] for part in parts]) for name in names]


def _ort_run(model: onnx.ModelProto) -> Run:
    reference = session(model)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [out.name for out in reference.get_outputs()]
        return dict(zip(names, reference.run(names, feeds), strict=True))

    return run


class PixelJudge:
    """generate / decode: pixels within one level, no new non-finite values."""

    def __init__(self, graph: Graph, fp32: onnx.ModelProto) -> None:
        rng = np.random.default_rng(SEED)
        sampled_by_input = any(spec.name == TEMPERATURE for spec in graph.inputs)
        self.cases = []
        for t in TEMPERATURES:
            feeds = {}
            for spec in graph.inputs:
                shape = [SAMPLES, *spec.shape[1:]]
                if spec.name == TEMPERATURE:
                    feeds[spec.name] = np.full(shape, t, np.float32)
                else:  # noise; a decoder's code is z = T noise (the manifest's temperature)
                    scale = 1.0 if sampled_by_input else t
                    feeds[spec.name] = (scale * rng.standard_normal(shape)).astype(np.float32)
            images, pixels = _run_chunks(_ort_run(fp32), feeds, [IMAGES, PIXELS])
            self.cases.append((t, feeds, np.isfinite(images), pixels.astype(np.int16)))
        self.speed_feeds = {k: v[:CHUNK] for k, v in self.cases[0][1].items()}
        self.bounds = {}
        for t in TEMPERATURES:
            self.bounds[f"pixels_beyond_one_level_share@T={t:g}"] = PIXEL_SHARE
            self.bounds[f"images_nonfinite@T={t:g}"] = 0.0

    def figures(self, run: Run, screen: bool = False) -> dict[str, float]:
        figures = {}
        for t, feeds, finite, want in self.cases:
            rows = len(want) // SCREEN if screen else len(want)
            part = {k: v[:rows] for k, v in feeds.items()}
            images, pixels = _run_chunks(run, part, [IMAGES, PIXELS])
            off = np.abs(pixels.astype(np.int16) - want[:rows]) > 1
            figures[f"pixels_beyond_one_level_share@T={t:g}"] = float(off.mean())
            figures[f"images_nonfinite@T={t:g}"] = float(
                (~np.isfinite(images) & finite[:rows]).sum()
            )
        return figures


def ood_sets(test: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Synthetic far-out-of-distribution uint8 images of the test images' shape."""
    rng = np.random.default_rng(seed)
    shape = (OOD_IMAGES, *test.shape[1:])
    return {
        "noise": rng.integers(0, 256, shape, dtype=np.uint8),
        "inverted": 255 - test[rng.choice(len(test), min(OOD_IMAGES, len(test)), replace=False)],
        "black": np.zeros(shape, np.uint8),
        "grey": np.full(shape, 128, np.uint8),
    }


class DensityJudge:
    """density: bits/dim per test image, typicality AUROC per OOD set."""

    def __init__(
        self,
        graph: Graph,
        fp32: onnx.ModelProto,
        data: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        if data is None:
            raise UserError(
                "--precision bf16 checks a density graph on the training and test images "
                "(bits/dim and typicality AUROC against float32), which could not be read; "
                "pass --data with the training data"
            )
        train, test = data
        self.sets = {"train": train[:TEST_IMAGES], "test": test[:TEST_IMAGES]}
        self.sets.update(ood_sets(test))
        rng = np.random.default_rng(SEED)
        self.offsets = {
            name: rng.random(images.shape, dtype=np.float32) for name, images in self.sets.items()
        }
        self.has_offset = any(spec.name == OFFSET for spec in graph.inputs)
        self.speed_feeds = {IMAGES: test[:CHUNK]}
        if self.has_offset:
            self.speed_feeds[OFFSET] = self.offsets["test"][:CHUNK]
        self.want = self._bits(_ort_run(fp32), screen=False)
        self.bounds = {"bits_per_dim_max_abs_error@test": BPD_BOUND, "bits_per_dim_nonfinite": 0.0}
        self.bounds.update({f"typicality_auroc_change@{name}": AUROC_BOUND for name in self._ood})
        self._want_auroc = self._aurocs(self.want)

    @property
    def _ood(self) -> list[str]:
        return [name for name in self.sets if name not in ("train", "test")]

    def _bits(self, run: Run, screen: bool) -> dict[str, np.ndarray]:
        bits = {}
        for name, images in self.sets.items():
            rows = max(2, len(images) // SCREEN) if screen else len(images)
            feeds = {IMAGES: images[:rows]}
            if self.has_offset:
                feeds[OFFSET] = self.offsets[name][:rows]
            (bits[name],) = _run_chunks(run, feeds, [BITS_PER_DIM])
        return bits

    def _aurocs(self, bits: dict[str, np.ndarray]) -> dict[str, float]:
        train = bits["train"][np.isfinite(bits["train"])]
        mean, std = float(train.mean()), float(train.std(ddof=1))
        inside = typicality(np.nan_to_num(bits["test"], nan=1e9, posinf=1e9), mean, std)
        return {
            name: auroc(
                inside, typicality(np.nan_to_num(bits[name], nan=1e9, posinf=1e9), mean, std)
            )
            for name in self._ood
        }

    def figures(self, run: Run, screen: bool = False) -> dict[str, float]:
        got = self._bits(run, screen)
        want = {name: self.want[name][: len(values)] for name, values in got.items()}
        finite = {name: np.isfinite(values) for name, values in want.items()}
        error = np.abs(got["test"] - want["test"])[finite["test"]]
        figures = {
            "bits_per_dim_max_abs_error@test": float(error.max(initial=0.0)),
            "bits_per_dim_nonfinite": float(
                sum((~np.isfinite(got[n]) & finite[n]).sum() for n in got)
            ),
        }
        mine = self._aurocs(got)
        reference = self._want_auroc if not screen else self._aurocs(want)
        for name in self._ood:
            figures[f"typicality_auroc_change@{name}"] = abs(mine[name] - reference[name])
        return figures


def _badness(figures: dict[str, float], bounds: dict[str, float]) -> float:
    """The worst figure relative to its bound (> 1: over); a zero bound is
    met by zero only."""
    worst = 0.0
    for key, value in figures.items():
        bound = bounds[key]
        if not np.isfinite(value):
            return float("inf")
        ratio = value / bound if bound > 0 else (0.0 if value == 0 else float("inf"))
        worst = max(worst, ratio)
    return worst


def _misses(figures: dict[str, float], bounds: dict[str, float]) -> str:
    over = [f"{k} {v:.3g} > {bounds[k]:.3g}" for k, v in figures.items() if not v <= bounds[k]]
    return "; ".join(over) or "none"
