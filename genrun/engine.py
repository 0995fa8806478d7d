"""An engine: one exported `.onnx` file in ONNX Runtime, with its manifest and
a `run` that checks every input against the manifest before the graph sees it
(so a wrong shape is one clear line, not an ONNX Runtime stack trace).

A foreign ONNX file (no vaeflow manifest) still loads when its inputs are
unambiguous, each a float or uint8 tensor with one dynamic leading (batch)
axis: `run`, `genrun info` and `genrun bench` work from the graph's own
input specs; sampling and scoring need the manifest and say so."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime

from .errors import UserError
from .manifest import BATCH, METADATA_KEY, Manifest, TensorSpec, read_with_onnxruntime

# Our names for ONNX Runtime's execution providers, best first: "auto" takes
# the first one this onnxruntime build offers.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# ONNX Runtime's tensor types that a foreign graph's inputs may have.
ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(uint8)": "uint8",
}


def available_providers() -> list[str]:
    """Our names of the providers this onnxruntime build offers, best first."""
    offered = set(onnxruntime.get_available_providers())
    return [name for name, ort_name in PROVIDERS.items() if ort_name in offered]


class Engine:
    """A loaded engine; build it with `load`."""

    def __init__(
        self, session: onnxruntime.InferenceSession, path: Path, provider: str, threads: int
    ):
        self.session = session
        self.path = path
        self.provider = provider  # the provider that runs the graph ("cpu", "cuda", ...)
        self.threads = threads  # ONNX Runtime's intra-op (CPU) threads
        if METADATA_KEY not in session.get_modelmeta().custom_metadata_map:
            self.manifest: Manifest | None = None  # a foreign graph: its own specs
            self.inputs = _graph_specs(session.get_inputs(), path)
            self.outputs = _graph_specs(session.get_outputs())
            return
        self.manifest = read_with_onnxruntime(session)
        self.inputs, self.outputs = self.manifest.inputs, self.manifest.outputs
        # ONNX Runtime hides inputs that have a default (initialisers), so what
        # must be fed comes from the manifest, checked against the session's.
        self._graph_inputs = {i.name for i in session.get_inputs()}
        missing = {s.name for s in self.manifest.inputs if s.default is None} - self._graph_inputs
        if missing or not self._graph_inputs <= {s.name for s in self.manifest.inputs}:
            raise UserError(
                f"{path}: graph inputs {sorted(self._graph_inputs)} do not match its manifest's "
                f"{[s.name for s in self.manifest.inputs]}; re-export the engine"
            )

    @property
    def family(self) -> str | None:
        return self.manifest and self.manifest.family

    @property
    def role(self) -> str | None:
        return self.manifest and self.manifest.role

    def require_manifest(self, purpose: str) -> Manifest:
        """The manifest, or a UserError saying that `purpose` needs it."""
        if self.manifest is None:
            raise UserError(
                f"{self.path} holds no vaeflow manifest (metadata key {METADATA_KEY!r}), which "
                f"{purpose} needs (family, role, data and latent shapes, pixel mapping); "
                "re-export the model with `genexport onnx CKPT`"
            )
        return self.manifest

    def run(self, **inputs: np.ndarray | float) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns every output by name. Inputs
        are checked against the manifest (names, dtypes, shapes, one batch
        size); float inputs are converted to float32, uint8 ones must be uint8."""
        specs = {spec.name: spec for spec in self.inputs}
        unknown = sorted(set(inputs) - specs.keys())
        if unknown:
            raise UserError(
                f"{self._what} has no input {', '.join(unknown)}; its inputs: {', '.join(specs)}"
            )
        feeds, batch = {}, None
        for spec in self.inputs:
            if spec.name not in inputs:
                if spec.default is None:
                    raise UserError(f"{self._what} needs input '{spec.name}' {_describe(spec)}")
                continue
            value = self._checked(spec, inputs[spec.name])
            if batch is not None and len(value) != batch:
                raise UserError(
                    f"{self._what}: input '{spec.name}' has batch size {len(value)}, "
                    f"the others {batch}; feed every input with the same N"
                )
            batch = len(value)
            feeds[spec.name] = value
        names = [spec.name for spec in self.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    @property
    def _what(self) -> str:
        if self.manifest is None:
            return f"the ONNX model {self.path.name}"
        return f"the {self.family} {self.role} engine {self.path.name}"

    def _checked(self, spec: TensorSpec, value: np.ndarray | float) -> np.ndarray:
        value = np.asarray(value)
        if spec.dtype == "uint8":
            if value.dtype != np.uint8:
                raise UserError(
                    f"{self._what}: input '{spec.name}' must be uint8 pixels 0..255, got "
                    f"{value.dtype}; convert with (x * 255).round().astype(np.uint8)"
                )
        elif not np.issubdtype(value.dtype, np.number):
            raise UserError(f"{self._what}: input '{spec.name}' must be numbers, got {value.dtype}")
        else:
            value = value.astype(spec.dtype, copy=False)
        shape = value.shape
        fits = len(shape) == len(spec.shape) and all(
            want == BATCH or got == want for got, want in zip(shape, spec.shape, strict=True)
        )
        if not fits or not shape or shape[0] == 0:
            raise UserError(
                f"{self._what}: input '{spec.name}' has shape {tuple(shape)}, "
                f"expected {_describe(spec)}"
            )
        return np.ascontiguousarray(value)


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask, which containers
    and taskset shrink; os.cpu_count() does not see that)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def session_options(threads: int, spin: bool = True) -> onnxruntime.SessionOptions:
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
    `spin=False` is there for such hosts."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def load(
    path: str | Path, provider: str = "auto", threads: int | None = None, spin: bool = True
) -> Engine:
    """Open an engine file on `provider` ("auto", "cpu", "cuda" or "tensorrt";
    "auto" takes the best one available, see `Engine.provider`) with `threads`
    intra-op CPU threads (default: `default_threads()`); `spin` see `session_options`."""
    path = Path(path)
    threads = default_threads() if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
    offered = available_providers()
    if provider == "auto":
        provider = offered[0]
    elif provider not in PROVIDERS:
        raise UserError(
            f"unknown provider {provider!r}; use auto or one of: {', '.join(PROVIDERS)}"
        )
    elif provider not in offered:
        raise UserError(
            f"provider {provider!r} is not in this onnxruntime build (it offers: "
            f"{', '.join(offered)}); install onnxruntime-gpu for cuda/tensorrt, or use auto"
        )
    if not path.is_file():
        raise UserError(f"engine {path} does not exist; export one with `genexport onnx CKPT`")
    # Fall back through the slower providers: ONNX Runtime places nodes a
    # GPU provider cannot run on the next one in this list.
    chosen = list(PROVIDERS)[list(PROVIDERS).index(provider) :]
    options = session_options(threads, spin)
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=[PROVIDERS[name] for name in chosen if name in offered]
        )
    except Exception as err:  # any parse failure of an untrusted file
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UserError(
            f"{path} is not a loadable ONNX model ({type(err).__name__}: {first}); pass an "
            "engine written by `genexport onnx`"
        ) from None
    try:
        return Engine(session, path, provider, threads)
    except UserError as err:  # a manifest read from a session is "the engine": name the file
        raise UserError(str(err).replace("the engine", str(path), 1)) from None


def _graph_specs(args: list[onnxruntime.NodeArg], path: Path | None = None) -> list[TensorSpec]:
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
        dtype = ORT_DTYPES.get(arg.type, arg.type)
        specs.append(TensorSpec(arg.name, dtype, dims, "read from the graph (no manifest)"))
    return specs


def _describe(spec: TensorSpec) -> str:
    shape = ", ".join(str(size) for size in spec.shape)
    return f"{spec.dtype} ({shape}) ({spec.description})"
