"""An engine: one exported `.onnx` file in ONNX Runtime, with its manifest and
a `run` that checks every input against the manifest before the graph sees it
(so a wrong shape is one clear line, not an ONNX Runtime stack trace)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from .errors import UserError
from .manifest import Manifest, TensorSpec, read_with_onnxruntime

# Our names for ONNX Runtime's execution providers, best first: "auto" takes
# the first one this onnxruntime build offers.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
BATCH = "N"


def available_providers() -> list[str]:
    """Our names of the providers this onnxruntime build offers, best first."""
    offered = set(onnxruntime.get_available_providers())
    return [name for name, ort_name in PROVIDERS.items() if ort_name in offered]


class Engine:
    """A loaded engine; build it with `load`."""

    def __init__(self, session: onnxruntime.InferenceSession, path: Path, provider: str):
        self.session = session
        self.path = path
        self.provider = provider  # the provider that runs the graph ("cpu", "cuda", ...)
        self.manifest: Manifest = read_with_onnxruntime(session)
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
    def family(self) -> str:
        return self.manifest.family

    @property
    def role(self) -> str:
        return self.manifest.role

    def run(self, **inputs: np.ndarray | float) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns every output by name. Inputs
        are checked against the manifest (names, dtypes, shapes, one batch
        size); float inputs are converted to float32, uint8 ones must be uint8."""
        specs = {spec.name: spec for spec in self.manifest.inputs}
        unknown = sorted(set(inputs) - specs.keys())
        if unknown:
            raise UserError(
                f"{self._what} has no input {', '.join(unknown)}; its inputs: {', '.join(specs)}"
            )
        feeds, batch = {}, None
        for spec in self.manifest.inputs:
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
        names = [spec.name for spec in self.manifest.outputs]
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    @property
    def _what(self) -> str:
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


def load(path: str | Path, provider: str = "auto") -> Engine:
    """Open an engine file on `provider` ("auto", "cpu", "cuda" or "tensorrt";
    "auto" takes the best one available, see `Engine.provider`)."""
    path = Path(path)
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
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-session warnings on stderr
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
        return Engine(session, path, provider)
    except UserError as err:  # a manifest read from a session is "the engine": name the file
        raise UserError(str(err).replace("the engine", str(path), 1)) from None


def _describe(spec: TensorSpec) -> str:
    shape = ", ".join(str(size) for size in spec.shape)
    return f"{spec.dtype} ({shape}) ({spec.description})"
