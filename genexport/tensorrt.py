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
- a workspace limit; the timing cache read from and written back to a file,
  so rebuilding (another role, another precision) skips the kernel timing.

Parity before anything is written: every plan against its ONNX graph in ONNX
Runtime CPU at batch 1, 7, opt and max, within the bounds the ONNX export
recorded for that graph (fp32: the export's float32 bounds; fp16: the fp16
graph's), and for flows the round trip uint8 images -> density plan ->
generate plan -> the same pixels. A miss is a one-line error and no file.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from genrun.backends import cuda_memory
from genrun.backends.sidecar import HARDWARE_COMPAT, PlanInfo, sha256, sidecar_path, to_text
from genrun.backends.tensorrt import PlanRunner, import_tensorrt, logger
from genrun.engine import ort_session
from genrun.errors import UserError
from genrun.manifest import (
    BATCH,
    DENSITY,
    GENERATE,
    IMAGES,
    LABEL,
    PIXELS,
    TEMPERATURE,
    Manifest,
    Parity,
    TensorSpec,
    latent_name,
    read_from_onnx,
)

from .onnx import write_atomically
from .verify import _max_abs as max_abs  # one rule for NaN and infinities

PRECISIONS = ("fp32", "fp16")
PLAN_REFERENCE = "onnxruntime-cpu"
PARITY_TEMPERATURE = 0.7  # what the parity inputs feed a generate graph's temperature
SEED = 0


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
    trt = import_tensorrt()
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
    plans, runners = [], {}
    for onnx_path in onnx_paths:
        manifest = read_from_onnx(onnx_path)
        if manifest.precision != options.precision:
            raise UserError(
                f"{onnx_path.name} is an {manifest.precision} graph and --precision is "
                f"{options.precision}: a plan's precision comes from its graph; pass the "
                f"{options.precision} graph (`genexport onnx CKPT --precision {options.precision}`)"
            )
        started = time.perf_counter()
        plan, cache = build_plan(trt, onnx_path, options, cache)
        runner = plan_runner(trt, plan, onnx_path, manifest)
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
            onnx_sha256=sha256(onnx_path),
            workspace_gib=options.workspace_gib,
        )
        manifest = replace(manifest, parity=[*manifest.parity, check])
        seconds = time.perf_counter() - started
        plans.append(
            BuiltPlan(onnx_path, out / f"{onnx_path.stem}.plan", plan, manifest, info, seconds)
        )
        runners[manifest.role] = runner
    _add_round_trip(plans, runners)
    failures = [f"{p.manifest.role}: {f}" for p in plans for f in p.parity.failures()]
    if failures:
        raise UserError(f"plan parity check failed, no plan written: {'; '.join(failures)}")
    files = {p.path: p.plan for p in plans}
    files |= {sidecar_path(p.path): to_text(p.manifest, p.info).encode() for p in plans}
    write_atomically({**files, cache_path: cache})
    return plans


def build_plan(
    trt: Any, onnx_path: Path, options: PlanOptions, timing_cache: bytes
) -> tuple[bytes, bytes]:
    """(serialised plan, updated timing cache) of one ONNX graph."""
    log = logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, log)
    with tempfile.TemporaryDirectory(prefix="genexport-trt-") as folder:
        source = Path(folder) / onnx_path.name
        source.write_bytes(inputs_not_constants(onnx_path.read_bytes()))
        parsed = parser.parse_from_file(str(source))
    if not parsed:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors[:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * 2**30))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profile_shapes(network, options).items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    if options.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache = config.create_timing_cache(timing_cache)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise UserError(
            f"TensorRT could not build {onnx_path.name} (see its log above); try a larger "
            "--workspace-gib or a smaller --max-batch"
        )
    return bytes(plan), bytes(config.get_timing_cache().serialize())


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


def profile_shapes(network: Any, options: PlanOptions) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every network input whose batch axis is
    dynamic (-1): batch 1, opt and max, the other axes as they are."""
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)
        if not dims or dims[0] != -1:
            continue  # a fixed input (a default baked in as batch 1)
        if -1 in dims[1:]:
            raise UserError(
                f"input '{tensor.name}' has a dynamic axis other than the batch ({dims}); "
                "re-export the engine with `genexport onnx`"
            )
        shapes[tensor.name] = tuple(
            (batch, *dims[1:]) for batch in (1, options.opt_batch, options.max_batch)
        )
    return shapes


def plan_runner(trt: Any, plan: bytes, onnx_path: Path, manifest: Manifest) -> PlanRunner:
    engine = trt.Runtime(logger(trt)).deserialize_cuda_engine(plan)
    if engine is None:
        raise UserError(f"TensorRT could not deserialise the plan it built from {onnx_path.name}")
    return PlanRunner(trt, engine, onnx_path.with_suffix(".plan"), manifest, None)


def seeded_inputs(
    specs: list[TensorSpec], batch: int, seed: int, classes: int = 0
) -> dict[str, np.ndarray]:
    """Parity inputs: random pixels, standard-normal floats, the temperature
    PARITY_TEMPERATURE, a conditional graph's labels (every one of `classes`
    in turn); inputs with a default are left to it."""
    rng = np.random.default_rng([SEED, seed])
    feeds = {}
    for spec in specs:
        if spec.default is not None:
            continue
        shape = [batch if size == BATCH else size for size in spec.shape]
        if spec.dtype == "uint8":
            feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif spec.name == LABEL:
            feeds[spec.name] = (np.arange(batch) + seed) % max(classes, 1)
        elif spec.name == TEMPERATURE:
            feeds[spec.name] = np.full(shape, PARITY_TEMPERATURE, np.float32)
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
    return feeds


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


def plan_parity(runner: Any, onnx_path: Path, manifest: Manifest, batch_sizes: list[int]) -> Parity:
    """Max abs error of every output the export bounded, plan vs ONNX
    Runtime CPU on the same seeded inputs, over `batch_sizes`."""
    tolerance = bounds(manifest)
    names = [spec.name for spec in manifest.outputs if spec.name in tolerance]
    reference = ort_session(onnx_path)
    errors = dict.fromkeys(names, 0.0)
    classes = len(manifest.classes or [])
    for batch in batch_sizes:
        feeds = seeded_inputs(manifest.inputs, batch, batch, classes)
        got = runner.run(feeds)
        want = dict(zip(names, reference.run(names, feeds), strict=True))
        for name in names:
            errors[name] = max(errors[name], max_abs(got[name], want[name]))
    return Parity(
        precision=manifest.precision,
        reference=PLAN_REFERENCE,
        batch_sizes=list(batch_sizes),
        max_abs_error=errors,
        tolerance={name: tolerance[name] for name in names},
    )


def _add_round_trip(plans: list[BuiltPlan], runners: dict[str, Any]) -> None:
    """Flows: uint8 images -> density plan latents -> generate plan at
    temperature 1 -> the images again (pixels within the export's round-trip
    bound of the inputs, images within it of ONNX Runtime's round trip)."""
    by_role = {plan.manifest.role: plan for plan in plans}
    if not {GENERATE, DENSITY} <= by_role.keys():
        return
    generate, density = by_role[GENERATE], by_role[DENSITY]
    tolerance = bounds(generate.manifest)
    if not {"round_trip.images", "round_trip.pixels"} <= tolerance.keys():
        return  # exported one role at a time: no round-trip bound recorded
    latents = [latent_name(i) for i in range(len(density.manifest.latent_shapes))]
    if latents[0] not in {spec.name for spec in density.manifest.outputs}:
        return  # a conditional flow's marginal density engine has no latents to invert
    noise = [s.name for s in generate.manifest.inputs if s.name not in (TEMPERATURE, LABEL)]
    sessions = [ort_session(density.onnx_path), ort_session(generate.onnx_path)]
    errors = {"round_trip.images": 0.0, "round_trip.pixels": 0.0}
    classes = len(density.manifest.classes or [])
    for batch in (1, 7):
        inputs = seeded_inputs(density.manifest.inputs, batch, batch, classes)
        pixels = inputs[IMAGES]
        label = {LABEL: inputs[LABEL]} if LABEL in inputs else {}  # conditional: both get it
        ones = np.ones(batch, np.float32)
        got_latents = runners[DENSITY].run({IMAGES: pixels, **label})
        feeds = {n: got_latents[latent] for n, latent in zip(noise, latents, strict=True)}
        got = runners[GENERATE].run({**feeds, **label, TEMPERATURE: ones})
        want_latents = sessions[0].run(latents, {IMAGES: pixels, **label})
        feeds = dict(zip(noise, want_latents, strict=True))
        want_images = sessions[1].run([IMAGES], {**feeds, **label, TEMPERATURE: ones})[0]
        errors["round_trip.images"] = max(
            errors["round_trip.images"], max_abs(got[IMAGES], want_images)
        )
        errors["round_trip.pixels"] = max(errors["round_trip.pixels"], max_abs(got[PIXELS], pixels))
    for plan in (generate, density):
        last = plan.manifest.parity[-1]
        last.max_abs_error.update(errors)
        last.tolerance.update({key: tolerance[key] for key in errors})
