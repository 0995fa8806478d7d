"""TensorRT: `.plan` engines written by `genexport tensorrt`, run with the
TensorRT runtime and cuda-python (no torch).

Loader (`load`): the sidecar first (genrun/backends/sidecar.py: its
manifest, and that it belongs to this plan), then `tensorrt` and cuda-python
(each missing one a one-line error naming the extra), the GPU (no driver, a
driver too old and no GPU each said apart), and whether this TensorRT and
this GPU can run the plan, all before TensorRT deserialises a byte of it.
A hardware-compatible plan needs no host code, and an untrusted file gets
none: `engine_host_code_allowed` stays off.

Runner (`PlanRunner`), the pattern of TensorRT's
samples/python/common_runtime.py made to run many calls fast:
- device buffers sized once, at the profile's max batch, and bound to every
  execution context (addresses never change); the contexts' scratch memory
  is one allocation they share (they run one at a time, on one stream);
- pinned host buffers, so the copies in and out are asynchronous on the
  runner's stream (one synchronisation per call);
- every `set_input_shape` checked; output shapes from the execution context
  once the inputs' are set;
- a batch above the profile's max is run in slices of at most max;
- `cuda_graphs=True`: a CUDA graph holds the shapes, addresses and context
  state of its capture, and TensorRT does not promise a graph survives a
  shape change of its context. So each graphed batch size gets its own
  execution context, its shapes set once, one plain enqueue (TensorRT's
  deferred set-up after a shape change happens outside the capture), then the
  capture; the plain context serves every other call. A batch size whose
  capture fails runs without a graph (said once); at most MAX_GRAPHS sizes
  are graphed.
- `close()` frees graphs, contexts, buffers, the scratch memory and the
  stream (the runner is a context manager; `genrun.Engine.close` calls it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..manifest import BATCH, Manifest
from . import cuda_memory
from .base import Feeds, LoadOptions, Runner, log
from .cuda_memory import CudaGraph, DeviceBuffer, PinnedBuffer, Stream
from .sidecar import PlanInfo, check_compatible, read_sidecar

if TYPE_CHECKING:
    import tensorrt

TENSORRT_EXTRA = "pip install 'vaeflow[tensorrt-cu13]' ('vaeflow[tensorrt-cu12]' for CUDA 12)"
MAX_GRAPHS = 8  # batch sizes captured per runner; others run without a graph


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a UserError naming the extra. A `tensorrt`
    without a version is not TensorRT (tensorrt-stubs alone installs one)."""
    missing = UserError(
        f"building or running a TensorRT plan needs the tensorrt package: {TENSORRT_EXTRA}"
    )
    try:
        import tensorrt
    except ImportError:
        raise missing from None
    if getattr(tensorrt, "__version__", None) is None or not hasattr(tensorrt, "Runtime"):
        raise missing
    return tensorrt


def logger() -> tensorrt.ILogger:
    import tensorrt as trt

    return trt.Logger(trt.Logger.ERROR)


def dims(shape: Any) -> tuple[int, ...]:
    """A TensorRT Dims (or any sequence) as a tuple of ints."""
    return tuple(int(shape[i]) for i in range(len(shape)))


def load(path: Path, options: LoadOptions | None = None) -> PlanRunner:
    """A runner of a `.plan` file; see the module doc for the order of checks."""
    options = options or LoadOptions()
    if options.provider not in ("auto", "tensorrt"):
        raise UserError(
            f"{path.name} is a TensorRT plan, which only TensorRT runs; use --provider auto "
            f"or tensorrt, or pass its .onnx engine to run on {options.provider}"
        )
    if not path.is_file():
        raise UserError(
            f"engine {path} does not exist; build one with `genexport tensorrt ENGINE.onnx`"
        )
    manifest, info = read_sidecar(path)
    import_tensorrt()
    import tensorrt as trt

    cuda_memory.cudart()
    device = cuda_memory.current_device()
    check_compatible(path, info, trt.__version__, device.capability)
    engine = trt.Runtime(logger()).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise UserError(
            f"TensorRT {trt.__version__} could not deserialise {path} on {device.name}; "
            "rebuild it here with `genexport tensorrt`"
        )
    return PlanRunner(engine, path, manifest, info, options.cuda_graphs)


class PlanRunner(Runner):
    """Runs one deserialised engine: `run(feeds)` -> every output by name (host
    numpy arrays the caller owns); `close()` frees what it holds."""

    provider = "tensorrt"

    def __init__(
        self,
        engine: tensorrt.ICudaEngine,
        path: Path,
        manifest: Manifest | None,
        info: PlanInfo | None,
        cuda_graphs: bool = False,
    ):
        self.engine, self.path = engine, path
        self.manifest, self.info, self.cuda_graphs = manifest, info, cuda_graphs
        self.settings = {"tf32": "on" if info is not None and info.tf32 else "off"}
        if cuda_graphs:
            self.settings["cuda_graphs"] = "on"
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, PinnedBuffer] = {}
        self.graphs: dict[int, tuple[tensorrt.IExecutionContext, CudaGraph]] = {}
        self.ungraphed: set[int] = set()  # batch sizes whose capture failed
        self.scratch: DeviceBuffer | None = None
        self.stream: Stream | None = None
        self.context: tensorrt.IExecutionContext | None = None
        try:
            self._open()
        except BaseException:
            self._close()  # what was allocated before the failure
            raise

    def _open(self) -> None:
        import tensorrt as trt

        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.names = names
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if self.manifest is not None:
            self.inputs, self.outputs = self.manifest.inputs, self.manifest.outputs
            self.defaults = {s.name: s for s in self.manifest.inputs if s.default is not None}
        else:
            self.inputs, self.outputs, self.defaults = [], [], {}
        dynamic = [n for n in self.input_names if -1 in dims(engine.get_tensor_shape(n))]
        if not dynamic:
            raise UserError(f"{self.path} has no input with a dynamic batch axis; rebuild the plan")
        self.dynamic = set(dynamic)
        self.profile = {
            n: [dims(s) for s in engine.get_tensor_profile_shape(n, 0)] for n in dynamic
        }
        self.max_batch = min(shapes[2][0] for shapes in self.profile.values())
        self.stream = Stream()
        self.scratch = DeviceBuffer(int(engine.device_memory_size_v2))
        # The profile's max shapes bound every buffer: set them, read every
        # output's shape at max from the context, allocate once.
        self.context = self._new_context()
        self._set_shapes(self.context, self.max_batch)
        for name in names:
            shape = dims(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self.host[name] = PinnedBuffer(math.prod(shape), dtype)
            self.device[name] = DeviceBuffer(self.host[name].nbytes)
        self._bind(self.context)
        self._shapes_of: int | None = self.max_batch  # the batch the plain context is set for

    def _new_context(self) -> tensorrt.IExecutionContext:
        """An execution context on the shared scratch memory."""
        import tensorrt as trt

        assert self.scratch is not None
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        context = self.engine.create_execution_context(strategy)
        if context is None:
            raise UserError(f"TensorRT could not create an execution context for {self.path}")
        context.set_device_memory(self.scratch.ptr, self.scratch.nbytes)
        return context

    def _bind(self, context: tensorrt.IExecutionContext) -> None:
        for name in self.names:
            if not context.set_tensor_address(name, self.device[name].ptr):
                raise RuntimeError(f"TensorRT refused the address of '{name}' in {self.path}")

    def _set_shapes(self, context: tensorrt.IExecutionContext, batch: int) -> None:
        for name in self.dynamic:
            shape = (batch, *self.profile[name][2][1:])
            if not context.set_input_shape(name, shape):
                low, high = self.profile[name][0][0], self.profile[name][2][0]
                raise UserError(
                    f"TensorRT refused shape {shape} for input '{name}' of {self.path} (its "
                    f"profile takes batch {low}..{high}); rebuild the plan with a profile "
                    "that covers it"
                )

    def run(self, feeds: Feeds) -> Feeds:
        batch = len(next(iter(feeds.values())))
        if batch <= self.max_batch:
            return self._run_batch(feeds, batch)
        parts = [
            self._run_batch({k: v[start : start + self.max_batch] for k, v in feeds.items()}, None)
            for start in range(0, batch, self.max_batch)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _run_batch(self, feeds: Feeds, batch: int | None) -> Feeds:
        assert self.stream is not None and self.context is not None
        batch = len(next(iter(feeds.values()))) if batch is None else batch
        for name in self.input_names:
            value = feeds.get(name)
            if value is None:  # an input the caller left to its manifest default
                spec = self.defaults.get(name)
                if spec is None:
                    raise UserError(f"{self.path}: the plan needs input '{name}'")
                shape = (
                    tuple(batch if d == BATCH else int(d) for d in spec.shape)
                    if name in self.dynamic
                    else dims(self.context.get_tensor_shape(name))  # baked in at batch 1
                )
                value = np.full(shape, spec.default, self.host[name].dtype)
            value = np.ascontiguousarray(value, self.host[name].dtype)
            self.host[name].array[: value.size] = value.reshape(-1)
            cuda_memory.copy_to_device(
                self.device[name], self.host[name], value.nbytes, self.stream
            )
        context = self._enqueue(batch)
        shapes = {name: dims(context.get_tensor_shape(name)) for name in self.output_names}
        for name, shape in shapes.items():
            nbytes = math.prod(shape) * self.host[name].dtype.itemsize
            cuda_memory.copy_to_host(self.host[name], self.device[name], nbytes, self.stream)
        self.stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next call.
        return {
            name: self.host[name].array[: math.prod(shape)].reshape(shape).copy()
            for name, shape in shapes.items()
        }

    def _enqueue(self, batch: int) -> tensorrt.IExecutionContext:
        """Put this batch's work on the stream; the context whose shapes hold."""
        assert self.stream is not None and self.context is not None
        graphed = self._graph(batch) if self.cuda_graphs else None
        if graphed is not None:
            context, graph = graphed
            graph.launch(self.stream)
            return context
        if self._shapes_of != batch:
            self._set_shapes(self.context, batch)
            self._shapes_of = batch
        self._execute(self.context)
        return self.context

    def _graph(self, batch: int) -> tuple[tensorrt.IExecutionContext, CudaGraph] | None:
        """This batch size's context and graph, captured on first use."""
        assert self.stream is not None
        if batch in self.graphs:
            return self.graphs[batch]
        if batch in self.ungraphed or len(self.graphs) >= MAX_GRAPHS:
            return None
        context = self._new_context()
        self._set_shapes(context, batch)
        self._bind(context)
        # One plain enqueue after the shapes are set lets TensorRT finish its
        # deferred set-up outside the capture (TensorRT developer guide).
        self._execute(context)
        handle = int(self.stream.handle)
        graph = cuda_memory.capture(
            lambda: context.execute_async_v3(handle), self.stream, f"batch {batch} of {self.path}"
        )
        if graph is None:
            self.ungraphed.add(batch)
            del context
            return None
        self.graphs[batch] = (context, graph)
        return self.graphs[batch]

    def _execute(self, context: tensorrt.IExecutionContext) -> None:
        assert self.stream is not None
        if not context.execute_async_v3(int(self.stream.handle)):
            raise RuntimeError(f"TensorRT could not enqueue {self.path}")

    def _close(self) -> None:
        """Free in dependency order: nothing in flight, graphs, the contexts
        that use the buffers, the buffers, the stream, the engine."""
        if self.stream is not None:
            try:
                self.stream.synchronize()
            except RuntimeError as err:  # a failed call left an error: free regardless
                log.debug("synchronize before close: %s", err)
        for _, graph in self.graphs.values():
            graph.free()
        self.graphs.clear()
        self.context = None
        for pinned in self.host.values():
            pinned.free()
        for buffer in self.device.values():
            buffer.free()
        self.host.clear()
        self.device.clear()
        if self.scratch is not None:
            self.scratch.free()
            self.scratch = None
        if self.stream is not None:
            self.stream.free()
            self.stream = None
        del self.engine
