"""OpenVINO: `.onnx` engines with bfloat16 layers (`genexport onnx --precision
bf16`) on x86 CPUs with AVX512-BF16 or AMX.

Such an engine states its precision in the graph itself: the layers chosen
for bfloat16 (convolutions and matrix products, with the ReLUs between them)
take bfloat16 inputs and weights and hand float32 back through explicit
Casts; every other node is float32. OpenVINO is compiled with
INFERENCE_PRECISION_HINT f32, so it runs exactly that graph: the bfloat16
layers on oneDNN's AMX/AVX512-BF16 kernels and nothing else lowered (its own
bf16 hint would lower every node, which is what fails parity:
benchmarks/results/precision-cpu.md). ONNX Runtime's CPU provider has no
bfloat16 convolution, so these engines load here.

Loader: `load_openvino(path, threads)` (genrun.load reaches it through
`load`, which ONNX Runtime's loader calls for a bf16 manifest); runner: `OpenVinoRunner`. The
`openvino` package is the extra "openvino" (`pip install 'vaeflow[openvino]'`),
imported only here; a CPU without bfloat16 instructions gets a one-line
UserError (OpenVINO would emulate them, slower than the float32 engine).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..manifest import METADATA_KEY, Manifest, TensorSpec
from ..manifest_io import from_json
from .base import Feeds, LoadOptions, Runner

# /proc/cpuinfo flags that mean native bfloat16 arithmetic (AVX512-BF16 dot
# products, AMX tiles); without one of them bfloat16 is emulated.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Flags worth reporting beside them (genrun bench, benchmarks/throughput.py).
REPORTED_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f")
# The manifest's precision that this backend runs.
PRECISION = "bf16"
_OV_DTYPES = {"f32": "float32", "f16": "float16", "u8": "uint8"}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is absent."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def bf16_support(flags: set[str] | None = None) -> str | None:
    """None when the CPU computes bfloat16 natively, else why not (one line)."""
    flags = cpu_flags() if flags is None else flags
    if any(flag in flags for flag in BF16_FLAGS):
        return None
    shown = ", ".join(sorted(f for f in REPORTED_FLAGS if f in flags)) or "none of them"
    return (
        f"this CPU has no bfloat16 instructions (its flags lack {' and '.join(BF16_FLAGS)}; "
        f"of {', '.join(REPORTED_FLAGS)} it has {shown}), so a bf16 engine would run slower "
        "than float32"
    )


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UserError(
            "bf16 engines run on OpenVINO, which is not installed; install it with "
            "pip install 'vaeflow[openvino]' (or use the float32 engine NAME.ROLE.onnx)"
        ) from None
    return openvino


@cache
def _core() -> Any:
    return import_openvino().Core()


def compile_onnx(source: bytes | str | Path, threads: int | None) -> Any:
    """An OpenVINO CompiledModel of an ONNX model (file or bytes) that runs
    the graph's own precisions (hint f32) on `threads` CPU threads (None:
    OpenVINO's own count)."""
    ov = import_openvino()
    core = _core()
    if isinstance(source, bytes):
        model = core.read_model(model=source, weights=ov.Tensor(np.empty(0, np.uint8)))
    else:
        model = core.read_model(str(source))
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "f32",  # the graph's own precisions, nothing lowered
        "PERFORMANCE_HINT": "LATENCY",  # one request at a time uses every thread
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model, "CPU", config), model


class OpenVinoRunner(Runner):
    """Runs one compiled model: `run(feeds)` -> every output by name, in the
    order of `outputs` (the manifest's, when there is one)."""

    provider = "cpu"

    def __init__(self, compiled: Any, path: Path, manifest: Manifest | None):
        self.compiled, self.path, self.manifest = compiled, path, manifest
        self.request = compiled.create_infer_request()
        self.settings = {"runtime": f"openvino {openvino_version()}", "precision": PRECISION}
        declared = (
            set() if manifest is None else {s.name for s in manifest.inputs + manifest.outputs}
        )
        graph_inputs = [_spec(port, declared) for port in compiled.inputs]
        graph_outputs = [_spec(port, declared) for port in compiled.outputs]
        self.graph = graph_inputs, graph_outputs  # held to the manifest by genrun.engine
        if manifest is None:
            self.inputs, self.outputs = graph_inputs, graph_outputs
        else:
            self.inputs, self.outputs = manifest.inputs, manifest.outputs
        # A graph input may carry several names (the exporter's and ours).
        self._input_port = {name: port for port in compiled.inputs for name in port.get_names()}
        self._output_port = {spec.name: _port(compiled.outputs, spec.name) for spec in self.outputs}
        if manifest is None:  # a graph being measured (genexport): every name of every output
            self._output_port = {n: port for port in compiled.outputs for n in port.get_names()}
        # Inputs with a default are plain graph inputs here (genexport.precision
        # drops the initialiser): fed their default when the caller leaves them out.
        self._defaults = {
            spec.name: spec
            for spec in self.inputs
            if spec.default is not None and spec.name in self._input_port
        }

    def run(self, feeds: Feeds) -> Feeds:
        batch = len(next(iter(feeds.values())))
        filled = {
            name: np.full([batch, *map(int, spec.shape[1:])], spec.default, spec.dtype)
            for name, spec in self._defaults.items()
            if name not in feeds
        }
        results = self.request.infer(
            {self._input_port[name]: value for name, value in {**feeds, **filled}.items()}
        )
        # infer() returns views of the request's buffers: copy before the next call.
        return {name: np.array(results[port]) for name, port in self._output_port.items()}

    def _close(self) -> None:
        self.request = self.compiled = None


def load(path: Path, options: LoadOptions, manifest: Manifest) -> OpenVinoRunner:
    """The runner of a bf16 `.onnx` engine on the CPU: genrun.backends.onnxruntime.load
    hands it on here with the manifest it read (and checked against the file)."""
    if options.provider not in ("auto", "cpu"):
        raise UserError(f"{path.name} is a bf16 engine, which runs on the CPU; use --provider cpu")
    return load_openvino(path, options.threads, manifest=manifest)


def openvino_version() -> str:
    return import_openvino().__version__.split("-")[0]


def load_openvino(
    source: Path | bytes,
    threads: int | None,
    path: Path | None = None,
    manifest: Manifest | None = None,
) -> OpenVinoRunner:
    """Loader: an OpenVinoRunner of a bf16 engine (a file, or its bytes with
    `path` naming it) on `threads` CPU threads (None: OpenVINO's own count),
    refusing in one line where OpenVINO is missing or the CPU lacks bfloat16
    instructions. `manifest`: as already read (else read from the model)."""
    if path is None:  # bytes come with the path that names them
        path = source if isinstance(source, Path) else Path("<bf16 engine>")
    why_not = bf16_support()
    if why_not:
        raise UserError(
            f"{path.name} is a bf16 engine and {why_not}; run the float32 engine "
            "(NAME.ROLE.onnx) here"
        )
    import_openvino()
    try:
        compiled, model = compile_onnx(source, threads)
    except UserError:
        raise
    except Exception as err:  # any parse or compile failure of an untrusted file
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UserError(
            f"{path} is not a loadable bf16 engine ({type(err).__name__}: {first}); pass an "
            "engine written by `genexport onnx --precision bf16`"
        ) from None
    key = ["framework", METADATA_KEY]
    if manifest is None and model.has_rt_info(key):
        manifest = from_json(model.get_rt_info(key).astype(str), source=str(path))
    return OpenVinoRunner(compiled, path, manifest)


def bf16_matmul_peak_gflops(
    threads: int, size: int = 2048, calls: int = 5, clock: Callable[[], float] = time.perf_counter
) -> float:
    """The machine's bfloat16 matrix-multiply rate in GFLOP/s, measured as
    genrun.flops measures the float32 one (median of `calls` timed size^3
    products after a warm-up, by `clock`), here with OpenVINO's bf16 MatMul
    (AMX or AVX512-BF16 through oneDNN) on `threads` threads."""
    ov = import_openvino()
    from openvino import opset13 as ops

    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.parameter([size, size], ov.Type.f32, name="b")
    low = [ops.convert(x, ov.Type.bf16) for x in (a, b)]
    product = ops.convert(ops.matmul(*low, False, False), ov.Type.f32)
    model = ov.Model([product], [a, b], "bf16_matmul")
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    request = _core().compile_model(model, "CPU", config).create_infer_request()
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((size, size), dtype=np.float32) for _ in range(2)]
    request.infer(feeds)  # warm-up: kernel selection, thread start, page faults
    times = []
    for _ in range(calls):
        started = clock()
        request.infer(feeds)
        times.append(clock() - started)
    return 2 * size**3 / float(np.median(times)) / 1e9


def _port(ports: list, name: str) -> Any:
    return next(port for port in ports if name in port.get_names())


def _spec(port: Any, declared: set[str]) -> TensorSpec:
    """A TensorSpec of a compiled model's port, named by the name the manifest
    declares among the port's names (else its first); dynamic dims "?"."""
    shape = port.get_partial_shape()
    dims: list[int | str] = [d.get_length() if d.is_static else "?" for d in shape]
    if dims and dims[0] == "?":
        dims[0] = "N"
    dtype = _OV_DTYPES.get(port.get_element_type().get_type_name(), str(port.get_element_type()))
    names = sorted(port.get_names(), key=lambda name: (name not in declared, name))
    return TensorSpec(names[0] if names else "?", dtype, dims, "read from the graph")
