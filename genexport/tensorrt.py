"""Verified ONNX engines -> TensorRT plans (`genexport tensorrt`).

Given a checkpoint, the ONNX engines are exported (and verified) first; given
an `ENGINE.onnx`, that graph is the source. Each graph becomes
`NAME.ROLE[.fp16].plan` with its sidecar `NAME.ROLE[.fp16].plan.json`
(genrun/backends/sidecar.py), built so that the same code runs on TensorRT 10
and 11:
- the network is created STRONGLY_TYPED (TensorRT 11 removed weak typing and
  the FP16/INT8 builder flags; on 11 the flag is accepted and ignored):
  precision comes from the graph, so an fp16 plan is built from genexport's
  fp16 graph (`genexport onnx --precision fp16`: float32 inputs and outputs,
  per-image sums and log-dets in float32);
- one optimisation profile over the batch axis: min 1, opt, max;
- TF32 off (TensorRT enables it by default): float32 layers compute in
  float32, so an fp32 plan meets the float32 bounds on Ampere and newer; the
  sidecar records `tf32: false`;
- a workspace limit; the timing cache read from and written back to a file,
  so rebuilding (another role, another precision) skips the kernel timing. A
  cache TensorRT refuses (written on another GPU or by another TensorRT) is
  replaced by a fresh one, and the build says so.

Parity before anything is written: every plan against its ONNX graph in ONNX
Runtime CPU at batch 1, 7, opt and max, within the bounds the ONNX export
recorded for that graph (fp32: the export's float32 bounds; fp16: the fp16
graph's), and for flows the round trip uint8 images -> density plan ->
generate plan -> the same pixels, compared by genrun's one comparator
(genrun/compare.py). A miss is a one-line error and no file.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from genrun.backends import cuda_memory
from genrun.backends import onnxruntime as onnxruntime_backend
from genrun.backends.base import LoadOptions, Runner
from genrun.backends.sidecar import HARDWARE_COMPAT, PlanInfo, sidecar_path, to_text
from genrun.backends.tensorrt import PlanRunner, dims, import_tensorrt, logger
from genrun.compare import Case, RoundTrip, compare, random_feeds
from genrun.errors import UserError
from genrun.manifest import DENSITY, GENERATE, IMAGES, LABEL, Manifest, Parity
from genrun.manifest_io import file_sha256, read_from_onnx

from .onnx import write_atomically

if TYPE_CHECKING:
    import tensorrt

PRECISIONS = ("fp32", "fp16")
PLAN_REFERENCE = "onnxruntime-cpu"
SEED = 0
log = logging.getLogger("genrun")


@dataclass
class PlanOptions:
    precision: str = "fp32"
    opt_batch: int = 256
    max_batch: int = 4096
    workspace_gib: float = 4.0
    timing_cache: Path | None = None  # default: OUT/tensorrt.timing-cache
    hardware_compat: str = "none"  # or "ampere+"

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; use fp32 or fp16")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise UserError(
                f"--opt-batch {self.opt_batch} and --max-batch {self.max_batch}: need "
                "1 <= opt <= max"
            )
        if not self.workspace_gib > 0:
            raise UserError(f"--workspace-gib must be > 0, got {self.workspace_gib}")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise UserError(
                f"unknown --hardware-compat {self.hardware_compat!r}; use "
                f"{' or '.join(HARDWARE_COMPAT)}"
            )

    @property
    def batch_sizes(self) -> list[int]:
        """Where parity is checked: 1, 7, opt and max (those within max)."""
        return sorted({b for b in (1, 7, self.opt_batch, self.max_batch) if b <= self.max_batch})


@dataclass
class BuiltPlan:
    """One verified plan, in memory until written to `path`."""

    onnx_path: Path
    path: Path
    plan: bytes
    manifest: Manifest  # the ONNX manifest, its parity list ending with the plan's
    info: PlanInfo
    seconds: float
    timing_cache: bytes  # the timing cache after this build

    @property
    def parity(self) -> Parity:
        return self.manifest.parity[-1]


def export_plans(
    source: Path,
    out: Path | None = None,
    graphs: str | None = None,
    options: PlanOptions | None = None,
    name: str | None = None,
) -> list[BuiltPlan]:
    """Build, verify and write the plans of a checkpoint or one ONNX engine."""
    options = options or PlanOptions()
    options.check()
    if not source.is_file():
        raise UserError(f"{source} does not exist; pass a checkpoint.pt or an ENGINE.onnx")
    # TensorRT and the GPU first: no ONNX export when no plan can be built.
    import_tensorrt()
    cuda_memory.cudart()
    device = cuda_memory.current_device()
    if source.suffix == ".onnx":
        if graphs is not None:
            raise UserError("--graphs picks a checkpoint's roles; an ENGINE.onnx is one role")
        onnx_paths = [source]
    else:
        from .export import export_checkpoint  # torch: only for a checkpoint

        exported = export_checkpoint(source, out, graphs, precision=options.precision, name=name)
        onnx_paths = [engine.path for engine in exported]
    out = out or onnx_paths[0].parent
    cache_path = options.timing_cache or out / "tensorrt.timing-cache"
    cache = cache_path.read_bytes() if cache_path.is_file() else b""
    plans: list[BuiltPlan] = []
    runners: dict[str, Runner] = {}
    try:
        plans = _build_all(onnx_paths, out, options, cache, device, runners)
    finally:
        for runner in runners.values():
            runner.close()
    failures = [f"{p.manifest.role}: {f}" for p in plans for f in p.parity.failures()]
    if failures:
        raise UserError(f"plan parity check failed, no plan written: {'; '.join(failures)}")
    files = {p.path: p.plan for p in plans}
    files |= {sidecar_path(p.path): to_text(p.manifest, p.info).encode() for p in plans}
    write_atomically({**files, cache_path: plans[-1].timing_cache})
    return plans


def _build_all(
    onnx_paths: list[Path],
    out: Path,
    options: PlanOptions,
    cache: bytes,
    device: cuda_memory.Device,
    runners: dict[str, Runner],
) -> list[BuiltPlan]:
    """Build and check every plan (their runners left in `runners`), then the round trip."""
    import tensorrt as trt

    plans = []
    for onnx_path in onnx_paths:
        manifest = read_from_onnx(onnx_path)
        if manifest.precision != options.precision:
            raise UserError(
                f"{onnx_path.name} is an {manifest.precision} graph and --precision is "
                f"{options.precision}: a plan's precision comes from its graph; pass the "
                f"{options.precision} graph (`genexport onnx CKPT --precision {options.precision}`)"
            )
        started = time.perf_counter()
        plan, cache = build_plan(onnx_path, options, cache)
        runner = plan_runner(plan, onnx_path, manifest)
        runners[manifest.role] = runner
        check = plan_parity(runner, onnx_path, manifest, options.batch_sizes)
        info = PlanInfo(
            tensorrt=trt.__version__,
            gpu=device.name,
            compute_capability=".".join(str(part) for part in device.capability),
            hardware_compat=options.hardware_compat,
            profile={"min": 1, "opt": options.opt_batch, "max": options.max_batch},
            precision=manifest.precision,
            plan_sha256=hashlib.sha256(plan).hexdigest(),
            onnx_file=onnx_path.name,
            onnx_sha256=file_sha256(onnx_path),
            workspace_gib=options.workspace_gib,
            tf32=False,
        )
        manifest = replace(manifest, parity=[*manifest.parity, check])
        seconds = time.perf_counter() - started
        path = out / f"{onnx_path.stem}.plan"
        plans.append(BuiltPlan(onnx_path, path, plan, manifest, info, seconds, cache))
    _add_round_trip(plans, runners)
    return plans


def build_plan(onnx_path: Path, options: PlanOptions, timing_cache: bytes) -> tuple[bytes, bytes]:
    """(serialised plan, updated timing cache) of one ONNX graph."""
    import tensorrt as trt

    trt_log = logger()
    builder = trt.Builder(trt_log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, trt_log)
    with tempfile.TemporaryDirectory(prefix="genexport-trt-") as folder:
        source = Path(folder) / onnx_path.name
        source.write_bytes(inputs_not_constants(onnx_path.read_bytes()))
        parsed = parser.parse_from_file(str(source))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    # TF32 is on by default; float32 layers stay float32 (the recorded bounds are float32's).
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(network, options).items():
        profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    use_timing_cache(config, timing_cache, onnx_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(
            f"TensorRT could not build {onnx_path.name} (see its log above); try a larger "
            "--workspace-gib or a smaller --max-batch"
        )
    updated = config.get_timing_cache()
    return bytes(plan), bytes(updated.serialize()) if updated is not None else timing_cache


def use_timing_cache(config: tensorrt.IBuilderConfig, data: bytes, onnx_path: Path) -> None:
    """Give the builder the timing cache in `data`; one TensorRT refuses (timed
    on another GPU, or by another TensorRT version: set_timing_cache returns
    False) is replaced by a fresh one, and the build says so once."""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    log.warning(
        "the TensorRT timing cache was timed on another GPU or TensorRT version; building %s "
        "with a fresh one (it replaces the old file)", onnx_path.name,
    )  # fmt: skip
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        raise UserError(f"TensorRT refused even an empty timing cache building {onnx_path.name}")


def inputs_not_constants(model_bytes: bytes) -> bytes:
    """The graph with every input that has a default (an initializer of the
    same name, e.g. the density's `offset`) turned into a plain input. ONNX
    Runtime lets a caller override such an input; TensorRT's parser would bake
    the default in as a constant, so a plan would silently ignore a seeded
    dequantisation offset. The plan runner feeds the manifest's default when
    the caller leaves one out."""
    import onnx  # genexport's own dependency; lazy like the rest of this module's imports

    model = onnx.load_model_from_string(model_bytes)
    inputs = {i.name for i in model.graph.input}
    kept = [init for init in model.graph.initializer if init.name not in inputs]
    if len(kept) == len(model.graph.initializer):
        return model_bytes
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model.SerializeToString()


def profile_shapes(
    network: tensorrt.INetworkDefinition, options: PlanOptions
) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every network input whose batch axis is
    dynamic (-1): batch 1, opt and max, the other axes as they are."""
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = dims(tensor.shape)
        if not shape or shape[0] != -1:
            continue  # a fixed input (a default baked in as batch 1)
        if -1 in shape[1:]:
            raise UserError(
                f"input '{tensor.name}' has a dynamic axis other than the batch ({shape}); "
                "re-export the engine with `genexport onnx`"
            )
        shapes[tensor.name] = tuple(
            (batch, *shape[1:]) for batch in (1, options.opt_batch, options.max_batch)
        )
    return shapes


def plan_runner(plan: bytes, onnx_path: Path, manifest: Manifest) -> PlanRunner:
    import tensorrt as trt

    engine = trt.Runtime(logger()).deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"TensorRT could not deserialise the plan it built from {onnx_path.name}")
    return PlanRunner(engine, onnx_path.with_suffix(".plan"), manifest, None)


def parity_feeds(manifest: Manifest, batch: int) -> dict:
    """The plan parity check's inputs at one batch size (genrun.compare.random_feeds;
    a conditional graph's labels take every class in turn)."""
    return random_feeds(manifest.inputs, batch, [SEED, batch], len(manifest.classes or []))


def bounds(manifest: Manifest) -> dict[str, float]:
    """The bounds the ONNX export held this graph to (its last parity record
    of its own precision, not a plan's), by output name and round_trip.*."""
    own = [
        p
        for p in manifest.parity
        if p.precision == manifest.precision and p.reference != PLAN_REFERENCE
    ]
    if not own:
        raise UserError(
            f"the {manifest.family} {manifest.role} manifest records no {manifest.precision} "
            "parity check; re-export the engine with `genexport onnx`"
        )
    return dict(own[-1].tolerance)


def plan_parity(
    runner: Runner, onnx_path: Path, manifest: Manifest, batch_sizes: list[int]
) -> Parity:
    """Max abs error of every output the export bounded, plan vs ONNX
    Runtime CPU on the same seeded inputs, over `batch_sizes`."""
    tolerance = bounds(manifest)
    names = [spec.name for spec in manifest.outputs if spec.name in tolerance]
    cases = [Case(f"batch of {b}, seed {b}", parity_feeds(manifest, b)) for b in batch_sizes]
    with onnxruntime_backend.load(onnx_path, LoadOptions(provider="cpu")) as reference:
        return compare(
            reference,
            runner,
            cases,
            {name: tolerance[name] for name in names},
            precision=manifest.precision,
            reference_name=PLAN_REFERENCE,
            batch_sizes=batch_sizes,
        )


def _add_round_trip(plans: list[BuiltPlan], runners: dict[str, Runner]) -> None:
    """Flows: uint8 images -> density plan latents -> generate plan at
    temperature 1 -> the images again (pixels within the export's round-trip
    bound of the inputs, images within it of ONNX Runtime's round trip)."""
    by_role = {plan.manifest.role: plan for plan in plans}
    if not {GENERATE, DENSITY} <= by_role.keys():
        return
    generate, density = by_role[GENERATE], by_role[DENSITY]
    tolerance = bounds(generate.manifest)
    keys = ("round_trip.images", "round_trip.pixels")
    if not set(keys) <= tolerance.keys():
        return  # exported one role at a time: no round-trip bound recorded
    if not any(spec.name.startswith("latent_") for spec in density.manifest.outputs):
        return  # a conditional flow's marginal density engine: no latents to invert
    kept = (IMAGES, LABEL)  # a conditional flow's label goes to both plans
    cases = [
        Case(
            f"images of batch {b}, seed {b}",
            {k: v for k, v in parity_feeds(density.manifest, b).items() if k in kept},
        )
        for b in (1, 7)
    ]
    cpu = LoadOptions(provider="cpu")
    with (
        onnxruntime_backend.load(density.onnx_path, cpu) as density_onnx,
        onnxruntime_backend.load(generate.onnx_path, cpu) as generate_onnx,
    ):
        reference = _OnnxImagesInputPixels(RoundTrip(density_onnx, generate_onnx))
        trip = compare(
            reference,
            RoundTrip(runners[DENSITY], runners[GENERATE]),
            cases,
            {key: tolerance[key] for key in keys},
            precision=generate.manifest.precision,
            reference_name=PLAN_REFERENCE,
            batch_sizes=[1, 7],
        )
    for plan in (generate, density):
        last = plan.manifest.parity[-1]
        last.max_abs_error.update(trip.max_abs_error)
        last.tolerance.update(trip.tolerance)
        last.misses.extend(trip.misses)


class _OnnxImagesInputPixels:
    """The plan round trip's reference: images from ONNX Runtime's own round
    trip, pixels the input pixels themselves."""

    def __init__(self, onnx_round_trip: RoundTrip):
        self.onnx_round_trip = onnx_round_trip

    def run(self, feeds: dict) -> dict:
        images = self.onnx_round_trip.run(feeds)["round_trip.images"]
        return {"round_trip.images": images, "round_trip.pixels": feeds[IMAGES]}
