"""TensorRT: `.plan` engines written by `genexport tensorrt`, run with the
TensorRT runtime and cuda-python (no torch).

Loader (`load_plan`): the sidecar first (genrun/backends/sidecar.py: its
manifest, and that it belongs to this plan), then `tensorrt` and cuda-python
(each missing one a one-line error naming the extra), the GPU, and whether
this TensorRT and this GPU can run the plan, all before TensorRT
deserialises a byte of it. Runner (`PlanRunner`), the pattern of TensorRT's
samples/python/common_runtime.py made to run many calls fast:
- device buffers sized once, at the profile's max batch, and bound to the
  execution context once (addresses never change);
- pinned host buffers, so the copies in and out are asynchronous on the
  runner's stream (one synchronisation per call);
- output shapes from the execution context once the inputs' are set;
- a batch above the profile's max is run in slices of at most max;
- `cuda_graphs=True`: TensorRT's enqueue for each batch size is captured once
  as a CUDA graph and replayed (one launch instead of one per kernel), as
  TensorRT's developer guide describes: one plain enqueue after the shapes
  change, then capture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..manifest import BATCH, Manifest
from . import cuda_memory
from .cuda_memory import CudaGraph, DeviceBuffer, PinnedBuffer, Stream
from .sidecar import PlanInfo, check_compatible, read_sidecar

TENSORRT_EXTRA = "pip install 'vaeflow[tensorrt]'"


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a UserError naming the extra."""
    try:
        import tensorrt
    except ImportError:
        raise UserError(
            f"building or running a TensorRT plan needs the tensorrt package: {TENSORRT_EXTRA}"
        ) from None
    return tensorrt


def logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.ERROR)


def load_plan(path: Path, cuda_graphs: bool = False) -> PlanRunner:
    """A runner of a `.plan` file; see the module doc for the order of checks."""
    manifest, info = read_sidecar(path)
    trt = import_tensorrt()
    cuda_memory.cudart()
    device = cuda_memory.current_device()
    check_compatible(path, info, trt.__version__, device.capability)
    runtime = trt.Runtime(logger(trt))
    if info.hardware_compat != "none":
        # Hardware-compatible plans carry host code TensorRT must be allowed to run.
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise UserError(
            f"TensorRT {trt.__version__} could not deserialise {path} on {device.name}; "
            "rebuild it here with `genexport tensorrt`"
        )
    return PlanRunner(trt, engine, path, manifest, info, cuda_graphs)


class PlanRunner:
    """Runs one deserialised engine: `run(feeds)` -> every output by name (host
    numpy arrays the caller owns)."""

    provider = "tensorrt"

    def __init__(
        self,
        trt: Any,
        engine: Any,
        path: Path,
        manifest: Manifest | None,
        info: PlanInfo | None,
        cuda_graphs: bool = False,
    ):
        self.trt, self.engine, self.path = trt, engine, path
        self.manifest, self.info, self.cuda_graphs = manifest, info, cuda_graphs
        self.context = engine.create_execution_context()
        self.stream = Stream()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        if manifest is not None:
            self.inputs, self.outputs = manifest.inputs, manifest.outputs
            self.defaults = {s.name: s for s in manifest.inputs if s.default is not None}
        else:
            self.inputs, self.outputs, self.defaults = [], [], {}
        # The profile's max shapes bound every buffer: set them, read every
        # output's shape at max from the context, allocate once.
        dynamic = [n for n in self.input_names if -1 in tuple(engine.get_tensor_shape(n))]
        if not dynamic:
            raise UserError(f"{path} has no input with a dynamic batch axis; rebuild the plan")
        profile = {n: engine.get_tensor_profile_shape(n, 0) for n in dynamic}
        self.max_batch = min(int(shapes[2][0]) for shapes in profile.values())
        for name in dynamic:
            self.context.set_input_shape(name, tuple(profile[name][2]))
        self.dynamic = set(dynamic)
        self.device: dict[str, DeviceBuffer] = {}
        self.host: dict[str, PinnedBuffer] = {}
        for name in names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            size = math.prod(shape)
            self.host[name] = PinnedBuffer(size, dtype)
            self.device[name] = DeviceBuffer(self.host[name].nbytes)
            self.context.set_tensor_address(name, self.device[name].ptr)
        self.graphs: dict[int, CudaGraph] = {}
        self._shapes_of: int | None = None  # the batch size the context's shapes are set for

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        if batch <= self.max_batch:
            return self._run(feeds, batch)
        parts = [
            self._run({k: v[start : start + self.max_batch] for k, v in feeds.items()}, None)
            for start in range(0, batch, self.max_batch)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _run(self, feeds: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values()))) if batch is None else batch
        for name in self.input_names:
            value = feeds.get(name)
            if value is None:  # an input the caller left to its manifest default
                spec = self.defaults.get(name)
                if spec is None:
                    raise UserError(f"{self.path}: the plan needs input '{name}'")
                shape = (
                    [batch if d == BATCH else d for d in spec.shape]
                    if name in self.dynamic
                    else tuple(self.context.get_tensor_shape(name))  # baked in at batch 1
                )
                value = np.full(shape, spec.default, self.host[name].dtype)
            value = np.ascontiguousarray(value, self.host[name].dtype)
            self.host[name].array[: value.size] = value.reshape(-1)
            if self._shapes_of != batch and name in self.dynamic:
                self.context.set_input_shape(name, value.shape)
            device, host = self.device[name], self.host[name]
            cuda_memory.copy_to_device(device, host, value.nbytes, self.stream)
        self._shapes_of = batch
        self._enqueue(batch)
        shapes = {name: tuple(self.context.get_tensor_shape(name)) for name in self.output_names}
        for name, shape in shapes.items():
            nbytes = math.prod(shape) * self.host[name].dtype.itemsize
            cuda_memory.copy_to_host(self.host[name], self.device[name], nbytes, self.stream)
        self.stream.synchronize()
        # Copies: the pinned buffers are overwritten by the next call.
        return {
            name: self.host[name].array[: math.prod(shape)].reshape(shape).copy()
            for name, shape in shapes.items()
        }

    def _enqueue(self, batch: int) -> None:
        handle = int(self.stream.handle)
        if not self.cuda_graphs:
            self._execute(handle)
            return
        if batch not in self.graphs:
            # One plain enqueue after a shape change lets TensorRT finish its
            # deferred set-up outside the capture (TensorRT developer guide).
            self._execute(handle)
            self.graphs[batch] = CudaGraph(lambda: self._execute(handle), self.stream)
        # The captured kernels carry their batch's shapes; the context's shapes
        # (set above) are only read for the outputs.
        self.graphs[batch].launch(self.stream)

    def _execute(self, handle: int) -> None:
        if not self.context.execute_async_v3(handle):
            raise RuntimeError(f"TensorRT could not enqueue {self.path}")

    def free(self) -> None:
        for graph in self.graphs.values():
            graph.free()
        for buffer in [*self.host.values(), *self.device.values()]:
            buffer.free()
        self.stream.free()
