"""ONNX Runtime: `.onnx` engines on the cpu, cuda or tensorrt execution provider.

Loader: `load_session` opens a file on the provider asked for (falling back
through the slower ones for nodes a GPU provider cannot place), with genrun's
measured settings (`session_options`); `create_session` is the one function
in vaeflow that creates an `onnxruntime.InferenceSession` (genexport's parity
checks and the manifest reader call it too). Runner: `OnnxRuntimeRunner`.

GPU providers (onnxruntime-gpu, `pip install 'vaeflow[gpu]'`):
- cuda: cuDNN's exhaustive convolution algorithm search (timed once per input
  shape, on the first call: bench's warm-up) and IO binding, so outputs are
  allocated by ONNX Runtime on the device and copied to the host once.
- tensorrt: ONNX Runtime builds TensorRT engines for the graph, kept with
  their timing cache in the folder `ENGINE.onnx.trt-cache/` beside the engine
  (the first load builds, later loads read them), one optimisation profile
  over the batch axis (PROFILE_BATCHES); precision comes from the graph (an
  fp16 graph runs in fp16), so ORT's fp16 flag stays off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime

from ..errors import UserError
from ..manifest import BATCH, METADATA_KEY, Manifest, TensorSpec, check_graph, from_json

# Our names for ONNX Runtime's execution providers, best first: "auto" takes
# the first one this onnxruntime build offers.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
GPU_PROVIDERS = ("tensorrt", "cuda")
# ONNX Runtime's tensor types that a foreign graph's inputs may have.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
}
# ... and what a manifest may also declare: a conditional engine's labels.
MANIFEST_DTYPES = {**ORT_DTYPES, "tensor(int64)": "int64"}
# The TensorRT provider's one optimisation profile over the batch axis: min, opt, max.
PROFILE_BATCHES = (1, 256, 4096)
TRT_WORKSPACE_BYTES = 4 << 30


def available_providers() -> list[str]:
    """Our names of the providers this onnxruntime build offers, best first."""
    offered = set(onnxruntime.get_available_providers())
    return [name for name, ort_name in PROVIDERS.items() if ort_name in offered]


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask, which containers
    and taskset shrink; os.cpu_count() does not see that)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def session_options(threads: int | None = None, spin: bool = True) -> onnxruntime.SessionOptions:
    """genrun's ONNX Runtime settings. Measured on Glow generate (L=2, K=8,
    128 hidden) at batch 1 and 256, side by side in one process
    (benchmarks/ort_profile.py; benchmarks/results/throughput-cpu.md, Profile):
    ORT's default ORT_ENABLE_ALL (NCHWc convolutions) beats the lower levels,
    sequential beats parallel execution, and memory pattern, arena and
    denormal settings change nothing, so those stay ORT's defaults. Idle
    intra-op threads spin (ORT's default): on a quiet machine spinning calls
    took 0.61x the time at batch 1 and 0.96x at batch 256. On a CPU shared with
    other busy processes the opposite held (a spinning thread takes the core a
    busy one needs: about half the time at batch 1 without it), so
    `spin=False` is there for such hosts. `threads=None` keeps ORT's own count."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def create_session(
    source: bytes | str | Path,
    providers: Sequence[str] = ("cpu",),
    options: onnxruntime.SessionOptions | None = None,
    provider_options: Sequence[dict[str, str]] | None = None,
) -> onnxruntime.InferenceSession:
    """An InferenceSession of a serialised model or a file, on `providers`
    (our names, in order), quiet by default (`session_options()`). Exceptions
    are ONNX Runtime's: callers that open untrusted files turn them into a
    UserError."""
    return onnxruntime.InferenceSession(
        source if isinstance(source, bytes) else str(source),
        options or session_options(),
        providers=[PROVIDERS[name] for name in providers],
        provider_options=list(provider_options) if provider_options is not None else None,
    )


def resolve_provider(provider: str) -> str:
    """'auto' -> the best provider present; anything else checked present."""
    offered = available_providers()
    if provider == "auto":
        return offered[0]
    if provider not in PROVIDERS:
        raise UserError(
            f"unknown provider {provider!r}; use auto or one of: {', '.join(PROVIDERS)}"
        )
    if provider not in offered:
        raise UserError(
            f"provider {provider!r} is not in this onnxruntime build (it offers: "
            f"{', '.join(offered)}); install onnxruntime-gpu (pip install 'vaeflow[gpu]') for "
            "cuda/tensorrt, or use auto"
        )
    return provider


def provider_options(name: str, path: Path, inputs: list[TensorSpec]) -> dict[str, str]:
    """ONNX Runtime's options for one of our providers (see the module doc)."""
    if name == "cuda":
        return {"device_id": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if name != "tensorrt":
        return {}
    cache = path.parent / f"{path.name}.trt-cache"
    try:
        cache.mkdir(exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the TensorRT cache folder {cache} ({err.strerror}); put the engine "
            "in a writable folder or use --provider cuda"
        ) from None
    options = {
        "device_id": "0",
        "trt_max_workspace_size": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }
    # One explicit profile over the batch axis, so a new batch size does not
    # rebuild the engine; only when the batch is every input's only free axis.
    if inputs and all(s.shape and s.shape[0] == BATCH and BATCH not in s.shape[1:] for s in inputs):
        for key, batch in zip(("min", "opt", "max"), PROFILE_BATCHES, strict=True):
            options[f"trt_profile_{key}_shapes"] = ",".join(
                f"{s.name}:" + "x".join(str(d) for d in [batch, *s.shape[1:]]) for s in inputs
            )
    return options


def load_session(
    path: Path, provider: str, threads: int, spin: bool = True
) -> tuple[onnxruntime.InferenceSession, str]:
    """(session, the provider that runs it) for an engine file; `provider`
    as `resolve_provider` takes it. A file ONNX Runtime cannot parse is a UserError."""
    provider = resolve_provider(provider)
    offered = available_providers()
    # Fall back through the slower providers: ONNX Runtime places nodes a
    # GPU provider cannot run on the next one in this list.
    slower = list(PROVIDERS)[list(PROVIDERS).index(provider) :]
    chosen = [name for name in slower if name in offered]
    options = session_options(threads, spin)
    try:
        inputs = []
        if provider == "tensorrt":  # the profile needs the graph's input shapes
            inputs = graph_specs(create_session(path, ("cpu",)).get_inputs())
        return create_session(
            path, chosen, options, [provider_options(name, path, inputs) for name in chosen]
        ), provider
    except UserError:
        raise
    except Exception as err:  # any parse failure of an untrusted file
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UserError(
            f"{path} is not a loadable ONNX model ({type(err).__name__}: {first}); pass an "
            "engine written by `genexport onnx`"
        ) from None


class OnnxRuntimeRunner:
    """Runs one session: `run(feeds)` -> every output by name. On a GPU
    provider the outputs are bound with IO binding (allocated on the device
    by ONNX Runtime, one copy to the host per call)."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        path: Path,
        provider: str,
        io_binding: bool | None = None,
    ):
        self.session, self.path, self.provider = session, path, provider
        self.io_binding = provider in GPU_PROVIDERS if io_binding is None else io_binding
        self.output_device = "cuda" if provider in GPU_PROVIDERS else "cpu"
        if METADATA_KEY not in session.get_modelmeta().custom_metadata_map:
            self.manifest: Manifest | None = None  # a foreign graph: its own specs
            self.inputs = graph_specs(session.get_inputs(), path)
            self.outputs = graph_specs(session.get_outputs())
            return
        self.manifest = from_json(
            session.get_modelmeta().custom_metadata_map[METADATA_KEY], source=str(path)
        )
        self.inputs, self.outputs = self.manifest.inputs, self.manifest.outputs
        graph = graph_specs(session.get_inputs()), graph_specs(session.get_outputs())
        check_graph(self.manifest, *graph, path)
        # ONNX Runtime hides inputs that have a default (initialisers), so what
        # must be fed comes from the manifest, checked against the session's.
        graph_inputs = {i.name for i in session.get_inputs()}
        missing = {s.name for s in self.manifest.inputs if s.default is None} - graph_inputs
        if missing or not graph_inputs <= {s.name for s in self.manifest.inputs}:
            raise UserError(
                f"{path}: graph inputs {sorted(graph_inputs)} do not match its manifest's "
                f"{[s.name for s in self.manifest.inputs]}; re-export the engine"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [spec.name for spec in self.outputs]
        if not self.io_binding:
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, self.output_device)
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))


def graph_specs(args: list[onnxruntime.NodeArg], path: Path | None = None) -> list[TensorSpec]:
    """TensorSpecs of a graph's own inputs (with `path`: checked unambiguous,
    else a UserError naming what is missing) or outputs (taken as they are)."""
    specs = []
    for arg in args:
        dims = [size if isinstance(size, int) else "?" for size in arg.shape]
        fits = arg.type in ORT_DTYPES and dims and dims[0] == "?" and "?" not in dims[1:]
        if path is not None and not fits:
            raise UserError(
                f"{path} holds no vaeflow manifest and its input '{arg.name}' ({arg.type}, "
                f"shape {arg.shape}) is not a float or uint8 tensor with one dynamic leading "
                "batch axis, so it cannot be fed; re-export the model with `genexport onnx CKPT`"
            )
        if dims and dims[0] == "?":
            dims[0] = BATCH
        dtype = MANIFEST_DTYPES.get(arg.type, arg.type)
        specs.append(TensorSpec(arg.name, dtype, dims, "read from the graph (no manifest)"))
    return specs
