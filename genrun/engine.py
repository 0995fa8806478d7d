"""An engine: one exported file (`.onnx` in ONNX Runtime, `.plan` in TensorRT)
with its manifest and a `run` that checks every input against the manifest
before the runtime sees it (so a wrong shape is one clear line, not a runtime
stack trace), having held the manifest to the graph the runtime reports at
load (`check_graph`). `load` picks the backend by the file's suffix
(genrun/backends/: a loader and a runner per runtime); everything above it
(Sampler, Scorer, the CLI) sees only `Engine.run(**numpy inputs) -> outputs`.
`load` also opens the engines that ship with the runtime (`builtin:NAME`,
genrun/builtin/; their catalogue is genrun/builtin.py).

A foreign ONNX file (no vaeflow manifest) still loads when its inputs are
unambiguous, each a float or uint8 tensor with one dynamic leading (batch)
axis: `run`, `genrun info` and `genrun bench` work from the graph's own
input specs; sampling and scoring need the manifest and say so."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from .backends import BACKENDS
from .backends.base import LoadOptions, Runner
from .backends.onnxruntime import PROVIDERS, available_providers, session_options
from .errors import UserError
from .manifest import BATCH, DENSITY, GENERATE, Manifest, TensorSpec

__all__ = [
    "BATCH",
    "PROVIDERS",
    "Engine",
    "available_providers",
    "default_threads",
    "load",
    "session_options",
]


class Engine:
    """A loaded engine; build it with `load`."""

    def __init__(self, runner: Runner, path: Path, threads: int):
        self.runner = runner
        self.path = path
        # What runs the graph ("cpu", "cuda", "tensorrt"): what the runtime
        # reports after loading, never merely what was asked for.
        self.provider = runner.provider
        self.threads = threads  # ONNX Runtime's intra-op (CPU) threads
        self.manifest: Manifest | None = runner.manifest  # None for a foreign graph
        self.inputs, self.outputs = runner.inputs, runner.outputs
        # A plan's build facts (genrun.backends.sidecar.PlanInfo); None for ONNX.
        self.plan: Any = getattr(runner, "info", None)
        if self.manifest is not None and runner.graph is not None:
            try:
                check_graph(self.manifest, *runner.graph, path)
            except UserError:
                runner.close()
                raise

    @property
    def backend(self) -> str:
        """The backends/ module that runs it: 'onnxruntime', 'tensorrt' or 'openvino'."""
        return type(self.runner).__module__.rsplit(".", 1)[-1]

    @property
    def settings(self) -> dict[str, str]:
        """What the numbers depend on besides the graph (e.g. {"tf32": "off"})."""
        return self.runner.settings

    def close(self) -> None:
        """Free the runner's session, device memory, streams and CUDA graphs;
        running a closed engine is a UserError. Also `with genrun.load(...) as e:`."""
        self.runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def session(self) -> Any:
        """The ONNX Runtime session (None for a plan)."""
        return getattr(self.runner, "session", None)

    @property
    def onnx_path(self) -> Path | None:
        """The ONNX graph this engine runs or was built from, if it is here."""
        if self.plan is None:
            return self.path
        source = self.path.with_name(self.plan.onnx_file)
        return source if source.is_file() else None

    @property
    def family(self) -> str | None:
        return self.manifest and self.manifest.family

    @property
    def role(self) -> str | None:
        return self.manifest and self.manifest.role

    def run(self, **inputs: np.ndarray | float) -> dict[str, np.ndarray]:
        """Run the graph on named inputs; returns every output by name. Inputs
        are checked against the manifest (names, dtypes, shapes, one batch
        size); float inputs are converted to float32, uint8 ones must be uint8."""
        if self.runner.closed:
            raise UserError(f"{self.path} was closed; load it again to run it")
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
        return self.runner.run(feeds)

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
        elif spec.dtype == "int64" and not np.issubdtype(value.dtype, np.integer):
            raise UserError(
                f"{self._what}: input '{spec.name}' must be integer class labels, got {value.dtype}"
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


def load(
    path: str | Path,
    provider: str = "auto",
    threads: int | None = None,
    spin: bool = True,
    cuda_graphs: bool = False,
    role: str | None = None,
) -> Engine:
    """Open an engine file with the backend of its suffix (genrun/backends/).
    `.onnx`: ONNX Runtime on `provider` ("auto", "cpu", "cuda" or "tensorrt";
    "auto" takes the best one that loads, see `Engine.provider`) with
    `threads` intra-op CPU threads (default: `default_threads()`); `spin` see
    `session_options`. `.plan`: TensorRT (provider "auto" or "tensorrt"),
    replaying one CUDA graph per batch size with `cuda_graphs`. `path` may
    name a shipped engine, `builtin:NAME.GRAPH`, or with `role` ("generate"
    or "density") `builtin:NAME`, the model's file for that role. Close the
    engine (or use it in a `with` block) to free what it holds at once."""
    path = locate(path, role)
    threads = default_threads() if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise UserError(f"threads must be a whole number >= 1, got {threads!r}")
    backend = import_module(f"genrun.backends.{BACKENDS.get(path.suffix, 'onnxruntime')}")
    options = LoadOptions(provider, threads, spin, cuda_graphs)
    return Engine(backend.load(path, options), path, threads)


BUILTIN_DIR = Path(__file__).parent / "builtin"
BUILTIN = "builtin:"
# The file a role is served from, in order of preference.
BUILTIN_FILES = {GENERATE: ("generate",), DENSITY: ("marginal", "density")}


def builtin_names() -> list[str]:
    """The shipped models, by name."""
    return sorted({path.name.split(".")[0] for path in BUILTIN_DIR.glob("*.onnx")})


def locate(engine: str | Path, role: str | None = None) -> Path:
    """`builtin:NAME` (or `builtin:NAME.GRAPH`) -> the shipped file that
    serves `role` ("generate" or "density"); any other path as it is."""
    if not str(engine).startswith(BUILTIN):
        return Path(engine)
    name, _, graph = str(engine)[len(BUILTIN) :].partition(".")
    shipped = builtin_names()
    if name not in shipped:
        have = ", ".join(f"{BUILTIN}{n}" for n in shipped) or "none"
        raise UserError(f"no builtin engine {name!r}; the runtime ships: {have} (genrun models)")
    graphs = [graph] if graph else list(BUILTIN_FILES.get(role or "", ()))
    for candidate in graphs:
        path = BUILTIN_DIR / f"{name}.{candidate}.onnx"
        if path.is_file():
            return path
    have = [p.name.split(".")[1] for p in sorted(BUILTIN_DIR.glob(f"{name}.*.onnx"))]
    choices = ", ".join(f"{BUILTIN}{name}.{g}" for g in have)
    if not graph and role is None:
        raise UserError(f"{BUILTIN}{name} names a model; load one of its engines: {choices}")
    want = f"'{graph}'" if graph else f"a {role} engine"
    raise UserError(f"{BUILTIN}{name} has no {want}; it ships: {choices}")


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask, which containers
    and taskset shrink; os.cpu_count() does not see that)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def check_graph(
    manifest: Manifest,
    graph_inputs: list[TensorSpec],
    graph_outputs: list[TensorSpec],
    source: str | Path,
) -> None:
    """A manifest must describe the graph it sits in: every tensor the graph
    names has the manifest's dtype and rank, and the same size on each axis
    the graph fixes (dims the graph leaves symbolic, "?" or "N", accept any),
    and every input the manifest gives no default is one the graph takes
    (ONNX Runtime does not list inputs that have one: initialisers). Checked
    at load on the specs the runtime reports (`Runner.graph`)."""
    for group, graph_specs, declared in (
        ("input", graph_inputs, manifest.inputs),
        ("output", graph_outputs, manifest.outputs),
    ):
        by_name = {spec.name: spec for spec in declared}
        for actual in graph_specs:
            spec = by_name.get(actual.name)
            if spec is None:
                if group == "output":
                    continue  # an extra output is never fed or read
                raise UserError(
                    f"{source}: graph input '{actual.name}' is not in its manifest; "
                    "re-export the engine"
                )
            if group == "output" and not actual.shape:
                continue  # ONNX Runtime knows no shape for this output: nothing to compare
            fixed = [a if isinstance(a, int) else None for a in actual.shape]
            fits = (
                actual.dtype == spec.dtype
                and len(actual.shape) == len(spec.shape)
                and all(
                    # A graph that fixes the batch axis cannot take N rows.
                    (a is None or group == "output") if want == BATCH else a in (None, want)
                    for a, want in zip(fixed, spec.shape, strict=True)
                )
            )
            if not fits:
                raise UserError(
                    f"{source}: the manifest says {group} '{spec.name}' is {spec.dtype} "
                    f"{spec.shape}, the graph has {actual.dtype} {actual.shape}; re-export the "
                    "engine with `genexport onnx`"
                )
    graph_names = {spec.name for spec in graph_inputs}
    missing = [s.name for s in manifest.inputs if s.default is None and s.name not in graph_names]
    if missing:
        raise UserError(
            f"{source}: graph inputs {sorted(graph_names)} do not match its manifest's "
            f"{[s.name for s in manifest.inputs]}; re-export the engine"
        )


def _describe(spec: TensorSpec) -> str:
    shape = ", ".join(str(size) for size in spec.shape)
    return f"{spec.dtype} ({shape}) ({spec.description})"
