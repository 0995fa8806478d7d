"""ONNX Runtime: `.onnx` engines on the cpu, cuda or tensorrt execution provider.

Loader (`load`): the manifest first, read from the file without a session
(genrun/manifest_io.py), then one session on the provider asked for, with
genrun's measured settings (`session_options`). `create_session` is the one
function in vaeflow that creates an `onnxruntime.InferenceSession`
(genexport's parity checks use it too). Runner: `OnnxRuntimeRunner`.

What runs is what the session says runs. ONNX Runtime falls back silently
(TensorRT -> CUDA -> CPU) when a provider's libraries or the GPU are
missing, and `get_available_providers()` lists what was compiled in, not
what loads. So the loader reads `session.get_providers()` after creating the
session: a provider asked for by name that is not the one running is a
one-line UserError naming what is missing (the driver, the CUDA or cuDNN
libraries, TensorRT) and the command that installs it; under `auto` the
runner's `provider` is the one that runs, and a GPU provider that was
compiled in but did not load is said once on stderr. Fallback at run time
is switched off (`disable_fallback`). In a process without torch,
`onnxruntime.preload_dlls()` loads the CUDA and cuDNN libraries that pip
installed (torch would otherwise have loaded them).

GPU providers (onnxruntime-gpu: `pip install 'vaeflow[gpu-cu13]'`, or
`[gpu-cu12]` for a CUDA 12 driver):
- cuda: TF32 off (`use_tf32=0`, so float32 is float32 on Ampere and newer:
  the parity bounds were measured without it), cuDNN's exhaustive convolution
  algorithm search (timed once per input shape, on the first call: bench's
  warm-up) and IO binding, so outputs are allocated by ONNX Runtime on the
  device and copied to the host once.
- tensorrt: ONNX Runtime builds TensorRT engines for the graph, kept with
  their timing cache in the folder `ENGINE.onnx.trt-cache/` beside the engine
  (the first load builds, later loads read them), one optimisation profile
  over the batch axis (PROFILE_BATCHES). An fp16 graph gets `trt_fp16_enable`
  (ONNX Runtime builds weakly typed networks, where float16 kernels need the
  flag). The provider has no TF32 switch: for float32 graphs the process
  environment's NVIDIA_TF32_OVERRIDE is set to 0 before the session is made
  (NVIDIA's libraries and TensorRT's builder read it), unless the user set it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import onnxruntime

from ..errors import UserError
from ..manifest import BATCH, Manifest, TensorSpec
from ..manifest_io import NotOnnx, manifest_in
from . import nvidia, openvino
from .base import Feeds, LoadOptions, Runner, log

# Our names for ONNX Runtime's execution providers, best first: "auto" takes
# the first one this onnxruntime build offers and can load.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
OUR_NAME = {ort: ours for ours, ort in PROVIDERS.items()}
LABEL = {"tensorrt": "TensorRT", "cuda": "CUDA", "cpu": "CPU"}
GPU_PROVIDERS = ("tensorrt", "cuda")
# The shared library ONNX Runtime loads for each GPU provider (in onnxruntime/capi/).
PROVIDER_LIBRARY = {
    "tensorrt": "libonnxruntime_providers_tensorrt.so",
    "cuda": "libonnxruntime_providers_cuda.so",
}
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
TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


def available_providers() -> list[str]:
    """Our names of the providers this onnxruntime build offers (compiled in,
    not necessarily loadable: see the module doc), best first."""
    check_one_onnxruntime()
    offered = set(onnxruntime.get_available_providers())
    return [name for name, ort_name in PROVIDERS.items() if ort_name in offered]


@cache
def check_one_onnxruntime() -> None:
    """onnxruntime and onnxruntime-gpu install the same `onnxruntime` package,
    so with both installed its files are a mix of the two: refuse, with the fix."""
    installed = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            installed.append(f"{name} {importlib.metadata.version(name)}")
    if len(installed) > 1:
        raise UserError(
            f"both {' and '.join(installed)} are installed; they share the import name "
            "onnxruntime and overwrite each other's files. Keep one: pip uninstall -y "
            "onnxruntime onnxruntime-gpu, then pip install 'vaeflow[cpu]' or "
            "'vaeflow[gpu-cu13]' ('vaeflow[gpu-cu12]' for a CUDA 12 driver)"
        )


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
    UserError. What ONNX Runtime prints on stdout while it retries with fewer
    providers is kept off stdout (genrun may be writing samples there)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return onnxruntime.InferenceSession(
            source if isinstance(source, bytes) else str(source),
            options or session_options(),
            providers=[PROVIDERS[name] for name in providers],
            provider_options=list(provider_options) if provider_options is not None else None,
        )


def load(path: Path, options: LoadOptions | None = None) -> Runner:
    """The runner of an `.onnx` file on `options.provider` (see the module
    doc); a file ONNX Runtime cannot parse is a UserError naming it. The
    manifest is read once, here, before any session (a graph changed since
    export is refused by manifest_in); a bf16 engine goes on to OpenVINO."""
    options = options or LoadOptions()
    if options.cuda_graphs:
        raise UserError("--cuda-graphs applies to TensorRT .plan engines; drop it for .onnx")
    # A file that is not protobuf as genexport writes it: ONNX Runtime's own
    # refusal below names it, or, if ONNX Runtime opens it anyway, this one.
    unreadable = None
    try:
        manifest = manifest_in(path, verify_graph=True)
    except NotOnnx as err:
        manifest, unreadable = None, err
    if manifest is not None and manifest.precision == openvino.PRECISION:
        return openvino.load(path, options, manifest)
    provider = resolve_provider(options.provider)
    chosen = [provider, *[p for p in PROVIDERS if p != provider and _is_slower(p, provider)]]
    chosen = [p for p in chosen if p in available_providers()]
    settings = {name: provider_options(name, path, manifest) for name in chosen}
    session_opts = session_options(options.threads, options.spin)
    try:
        with _tf32_off_for(manifest, provider):
            session = create_session(path, chosen, session_opts, list(settings.values()))
    except UserError:
        raise
    except Exception as err:  # any parse failure of an untrusted file
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UserError(
            f"{path} is not a loadable ONNX model ({type(err).__name__}: {first}); pass an "
            "engine written by `genexport onnx`"
        ) from None
    if unreadable is not None:
        raise unreadable
    running = OUR_NAME.get(session.get_providers()[0], "cpu")
    if running != provider:
        reason = provider_problem(provider)
        if options.provider != "auto":
            raise UserError(
                f"the {LABEL[provider]} provider did not load ({reason}); {_fix(provider)}, "
                "or run on the CPU with --provider cpu"
            )
        log.warning("auto: the %s provider did not load (%s); running on %s", LABEL[provider],
                    reason, running)  # fmt: skip
    session.disable_fallback()  # a run that fails on the GPU raises, never reruns on the CPU
    return OnnxRuntimeRunner(session, path, running, manifest, settings.get(running, {}))


def resolve_provider(provider: str) -> str:
    """'auto' -> the best provider present whose libraries load; anything else
    checked present in this onnxruntime build."""
    offered = available_providers()
    if provider == "auto":
        chosen = next((p for p in offered if provider_problem(p, quick=True) is None), "cpu")
        if chosen == "cpu" and "cuda" in offered:  # onnxruntime-gpu, but CUDA cannot load
            log.warning("auto: the CUDA provider did not load (%s); running on cpu",
                        provider_problem("cuda", quick=True))  # fmt: skip
        return chosen
    if provider not in PROVIDERS:
        raise UserError(
            f"unknown provider {provider!r}; use auto or one of: {', '.join(PROVIDERS)}"
        )
    if provider not in offered:
        raise UserError(
            f"provider {provider!r} is not in this onnxruntime build (it offers: "
            f"{', '.join(offered)}); for cuda/tensorrt replace onnxruntime with onnxruntime-gpu: "
            f"pip uninstall -y onnxruntime && {nvidia.gpu_extra(_built_cuda())}, or use auto"
        )
    problem = provider_problem(provider, quick=True)
    if problem is not None:
        raise UserError(
            f"the {LABEL[provider]} provider did not load ({problem}); {_fix(provider)}, or run "
            "on the CPU with --provider cpu"
        )
    return provider


def provider_problem(provider: str, quick: bool = False) -> str | None:
    """Why a GPU provider cannot run here, or None if nothing is known to be
    missing. `quick`: only the provider's own libraries (the part ONNX Runtime
    would report by printing and falling back); otherwise the driver too."""
    if provider not in PROVIDER_LIBRARY:
        return None
    _preload_cuda_libraries()
    library = Path(onnxruntime.__file__).parent / "capi" / PROVIDER_LIBRARY[provider]
    missing = nvidia.missing_library(str(library))
    if missing is not None:
        return f"{nvidia.owner(missing, _built_cuda())} not found: {missing}"
    if quick:
        return None
    return nvidia.driver_problem(_built_cuda()) or "no CUDA GPU visible to this process"


def _fix(provider: str) -> str:
    if provider == "tensorrt":
        extra = f"tensorrt-cu{str(_built_cuda() or 13).split('.')[0]}"
        return (
            f"install TensorRT's libraries (pip install 'vaeflow[{extra}]') or use --provider cuda"
        )
    return f"install them with {nvidia.gpu_extra(_built_cuda())}"


def _is_slower(other: str, than: str) -> bool:
    order = list(PROVIDERS)
    return order.index(other) > order.index(than)


def _built_cuda() -> str | None:
    """The CUDA version this onnxruntime build targets ('13.0'), if it says."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None)


@cache
def _preload_cuda_libraries() -> str:
    """onnxruntime.preload_dlls() (onnxruntime-gpu >= 1.21): CUDA and cuDNN
    from the nvidia-* wheels pip installed, found without torch. What it
    prints goes into the return value, not to stdout."""
    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.suppress(Exception):
        preload()
    return printed.getvalue()


@contextlib.contextmanager
def _tf32_off_for(manifest: Manifest | None, provider: str):
    """For a float32 graph on ONNX Runtime's TensorRT provider (which has no
    TF32 option): NVIDIA_TF32_OVERRIDE=0 while the session builds, unless set."""
    if provider != "tensorrt" or os.environ.get(TF32_OVERRIDE) is not None:
        yield
        return
    if manifest is not None and manifest.precision != "fp32":
        yield
        return
    os.environ[TF32_OVERRIDE] = "0"
    try:
        yield
    finally:
        del os.environ[TF32_OVERRIDE]


def provider_options(name: str, path: Path, manifest: Manifest | None) -> dict[str, str]:
    """ONNX Runtime's options for one of our providers (see the module doc)."""
    if name == "cuda":
        return {"device_id": "0", "use_tf32": "0", "cudnn_conv_algo_search": "EXHAUSTIVE"}
    if name != "tensorrt":
        return {}
    cache_folder = path.parent / f"{path.name}.trt-cache"
    try:
        cache_folder.mkdir(exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the TensorRT cache folder {cache_folder} ({err.strerror}); put the "
            "engine in a writable folder or use --provider cuda"
        ) from None
    options = {
        "device_id": "0",
        "trt_max_workspace_size": str(TRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_folder),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_folder),
    }
    if manifest is None:
        return options  # a foreign graph: ONNX Runtime's own profiles
    if manifest.precision == "fp16":
        options["trt_fp16_enable"] = "True"
    # One explicit profile over the batch axis, so a new batch size does not
    # rebuild the engine; only when the batch is every input's only free axis.
    # Inputs with a default are initializers ONNX Runtime does not list as inputs.
    inputs = [spec for spec in manifest.inputs if spec.default is None]
    if all(s.shape and s.shape[0] == BATCH and BATCH not in s.shape[1:] for s in inputs):
        for key, batch in zip(("min", "opt", "max"), PROFILE_BATCHES, strict=True):
            options[f"trt_profile_{key}_shapes"] = ",".join(
                f"{s.name}:" + "x".join(str(d) for d in [batch, *s.shape[1:]]) for s in inputs
            )
    return options


class OnnxRuntimeRunner(Runner):
    """Runs one session: `run(feeds)` -> every output by name. On a GPU
    provider the outputs are bound with IO binding (allocated on the device
    by ONNX Runtime, one copy to the host per call). `manifest` as read from
    the file (None: a foreign graph, run by its own specs); `specs` (inputs,
    outputs) instead for a graph being exported, which has no manifest yet."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        path: Path,
        provider: str = "cpu",
        manifest: Manifest | None = None,
        settings: dict[str, str] | None = None,
        io_binding: bool | None = None,
        specs: tuple[list[TensorSpec], list[TensorSpec]] | None = None,
    ):
        self.session, self.path, self.provider = session, path, provider
        self.settings = {"tf32": "off"} if provider in GPU_PROVIDERS else {}
        self.settings |= {k: v for k, v in (settings or {}).items() if k == "trt_fp16_enable"}
        self.io_binding = provider in GPU_PROVIDERS if io_binding is None else io_binding
        self.output_device = "cuda" if provider in GPU_PROVIDERS else "cpu"
        if specs is not None:
            self.manifest, (self.inputs, self.outputs) = None, specs
            return
        self.manifest = manifest
        if manifest is None:  # a foreign graph: its own specs
            self.inputs = graph_specs(session.get_inputs(), path)
            self.outputs = graph_specs(session.get_outputs())
            return
        # What must be fed comes from the manifest (ONNX Runtime hides inputs
        # that have a default), held to the session's graph by genrun.engine.
        self.inputs, self.outputs = manifest.inputs, manifest.outputs
        self.graph = graph_specs(session.get_inputs()), graph_specs(session.get_outputs())

    def run(self, feeds: Feeds) -> Feeds:
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

    def _close(self) -> None:
        # The session owns its memory arenas (and, on a GPU, the device's):
        # dropping the last reference frees them.
        del self.session


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
                "batch axis, so it cannot be fed; re-export the model with `genexport onnx`"
            )
        if dims and dims[0] == "?":
            dims[0] = BATCH
        dtype = MANIFEST_DTYPES.get(arg.type, arg.type)
        specs.append(TensorSpec(arg.name, dtype, dims, "read from the graph (no manifest)"))
    return specs
