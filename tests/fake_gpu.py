"""Fake `tensorrt` and `cuda.bindings.runtime` modules for CPU machines.

They implement the part of NVIDIA's APIs that genexport/tensorrt.py and
genrun/backends/ call, with ONNX Runtime CPU as the "GPU": a "plan" is a
small JSON header (the builder's flags, profile, workspace, hardware level)
followed by the ONNX bytes; "device memory" is host memory, so copies are
memmoves. They are strict where the real ones are, so vaeflow's mistakes
show on a CPU:

- names, signatures and enum values are TensorRT 10.13's (tests/test_gpu.py
  checks them against tensorrt-stubs: STRONGLY_TYPED is 1, TensorIOMode
  INPUT 1 and OUTPUT 2, BuilderFlag.TF32 6);
- calls return False (or None) where the real ones do: `set_input_shape`
  outside the profile, `execute_async_v3` without every shape, address and
  (for a user-managed context) its device memory, `set_timing_cache` with a
  cache from another GPU (`trt.foreign_cache`), `get_timing_cache` when
  `trt.lose_timing_cache` is set, an enqueue that `trt.fail_capture` makes
  fail while a stream captures (then the capture is invalidated, as CUDA does);
- a stream runs its work asynchronously: nothing happens until
  cudaStreamSynchronize, so a missing synchronisation returns stale numbers;
- a captured enqueue keeps the shapes of its capture and is only valid while
  its context keeps them: replaying it after `set_input_shape` changed that
  context writes NaN (TensorRT does not promise such a graph works), and
  capturing right after a shape change, without the plain enqueue that lets
  TensorRT finish its set-up, fails;
- every allocation, stream, graph and context is counted, so a leak shows.

`install(monkeypatch)` puts both in sys.modules and returns them;
`install(monkeypatch, checked=True)` also sends every CUDA call through the
real cuda.bindings module first (its argument types are the real ones: a
wrong argument is the real TypeError), then answers with the fake."""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import inspect
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from genrun.backends.onnxruntime import create_session

HEADER = b"FAKEPLAN\n"
ORT_DTYPES = {"tensor(float)": 0, "tensor(float16)": 1, "tensor(uint8)": 5, "tensor(int64)": 8}
OTHER_GPU = b"OTHERGPU"  # a timing cache that starts so was "timed on another GPU"


# --- cuda.bindings.runtime -------------------------------------------------


class cudaError_t(enum.IntEnum):  # CUDA's names and values
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


class FakeStream:
    """A stream's queue of work not yet run, and its capture (a list) if capturing."""

    def __init__(self) -> None:
        self.queue: list = []
        self.capture: list | None = None
        self.invalidated = False


class FakeCudart(types.ModuleType):
    def __init__(
        self,
        devices: int = 1,
        capability: tuple[int, int] = (9, 0),
        driver: int = 13000,
        runtime_version: int = 13000,
        real: types.ModuleType | None = None,
    ):
        super().__init__("cuda.bindings.runtime")
        self.devices, self.capability = devices, capability
        self.driver, self.runtime_version, self.real = driver, runtime_version, real
        types_from = real if real is not None else sys.modules[__name__]
        self.cudaError_t = types_from.cudaError_t
        self.cudaMemcpyKind = types_from.cudaMemcpyKind
        self.cudaStreamCaptureMode = types_from.cudaStreamCaptureMode
        self.memory: dict[int, ctypes.Array] = {}  # pointer -> its buffer, kept alive
        self.streams: dict[int, FakeStream] = {}
        self.graphs: dict[int, list] = {}  # graphs and executable graphs, by handle
        self.last_error = self.cudaError_t.cudaSuccess
        self.copies = self.syncs = 0
        self._next = 1000

    # handles of the real types when the real module is there
    def _handle(self, kind: str) -> tuple[int, object]:
        self._next += 1
        if self.real is None:
            return self._next, self._next
        return self._next, getattr(self.real, kind)(init_value=self._next)

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def _error(self, name: str, *values):
        self.last_error = getattr(self.cudaError_t, name)
        return (self.last_error, *values)

    def cudaGetDeviceCount(self):
        if not self.driver or self.driver // 1000 < self.runtime_version // 1000:
            return self._error("cudaErrorInsufficientDriver", 0)
        if self.devices == 0:
            return self._error("cudaErrorNoDevice", 0)
        return self._ok(self.devices)

    def cudaGetDeviceProperties(self, device: int):
        major, minor = self.capability
        return self._ok(SimpleNamespace(name=b"Fake GPU\x00", major=major, minor=minor))

    def cudaDriverGetVersion(self):
        return self._ok(self.driver)

    def cudaRuntimeGetVersion(self):
        return self._ok(self.runtime_version)

    def cudaGetLastError(self):
        error, self.last_error = self.last_error, self.cudaError_t.cudaSuccess
        return (error,)

    def cudaMalloc(self, size: int):
        buffer = ctypes.create_string_buffer(size)
        self.memory[ctypes.addressof(buffer)] = buffer
        return self._ok(ctypes.addressof(buffer))

    cudaMallocHost = cudaMalloc

    def cudaFree(self, devPtr: int):
        if self.memory.pop(int(devPtr), None) is None:
            return self._error("cudaErrorInvalidValue")
        return self._ok()

    cudaFreeHost = cudaFree

    def cudaStreamCreate(self):
        key, handle = self._handle("cudaStream_t")
        self.streams[key] = FakeStream()
        return self._ok(handle)

    def cudaStreamDestroy(self, stream):
        self._drain(self.streams.pop(int(stream)))
        return self._ok()

    def cudaStreamSynchronize(self, stream):
        self.syncs += 1
        self._drain(self.streams[int(stream)])
        return self._ok()

    def _drain(self, stream: FakeStream) -> None:
        work, stream.queue = stream.queue, []
        for item in work:
            item()

    def enqueue(self, stream, work) -> None:
        """Queue `work` on a stream (run at its next synchronisation), or record
        it while the stream is capturing."""
        target = self.streams[int(stream)]
        (target.capture if target.capture is not None else target.queue).append(work)

    def capturing(self, stream) -> bool:
        return self.streams[int(stream)].capture is not None

    def invalidate_capture(self, stream) -> None:
        self.streams[int(stream)].invalidated = True
        self.last_error = self.cudaError_t.cudaErrorStreamCaptureInvalidated

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind, stream):
        for pointer in (dst, src):
            if not any(base <= pointer < base + len(b) for base, b in self.memory.items()):
                return self._error("cudaErrorInvalidValue")
        self.copies += 1
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, count))
        return self._ok()

    def cudaStreamBeginCapture(self, stream, mode):
        target = self.streams[int(stream)]
        target.capture, target.invalidated = [], False
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        target = self.streams[int(stream)]
        captured, target.capture = target.capture, None
        if target.invalidated:
            return self._error("cudaErrorStreamCaptureInvalidated", None)
        key, handle = self._handle("cudaGraph_t")
        self.graphs[key] = list(captured or [])
        return self._ok(handle)

    def cudaGraphInstantiate(self, graph, flags: int):
        key, handle = self._handle("cudaGraphExec_t")
        self.graphs[key] = list(self.graphs[int(graph)])
        return self._ok(handle)

    def cudaGraphLaunch(self, graphExec, stream):
        for work in self.graphs[int(graphExec)]:
            self.enqueue(stream, work)
        return self._ok()

    def cudaGraphExecDestroy(self, graphExec):
        del self.graphs[int(graphExec)]
        return self._ok()

    cudaGraphDestroy = cudaGraphExecDestroy


class CheckedCudart(types.ModuleType):
    """Every attribute from the real cuda.bindings.runtime (a name it lacks is
    an AttributeError); every call made on the real module first, with the
    caller's arguments (a wrong type is its TypeError; its answer, a driver
    error on a machine without a GPU, is recorded in `calls`), then answered
    by the fake so the caller carries on."""

    def __init__(self, real: types.ModuleType, fake: FakeCudart):
        super().__init__("cuda.bindings.runtime")
        self._real, self._fake, self.calls = real, fake, []

    def __getattr__(self, name: str):
        attribute = getattr(self._real, name)
        if inspect.isclass(attribute) or not callable(attribute):
            return attribute

        def checked(*args, **kwargs):
            answer = attribute(*args, **kwargs)
            self.calls.append((name, answer[0] if isinstance(answer, tuple) else answer))
            return getattr(self._fake, name)(*args, **kwargs)

        return checked


# --- tensorrt --------------------------------------------------------------


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    UINT8 = 5
    INT64 = 8


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    TF32 = 6


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class HardwareCompatibilityLevel(enum.IntEnum):
    NONE = 0
    AMPERE_PLUS = 1
    SAME_COMPUTE_CAPABILITY = 2


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING


class Logger(ILogger):
    def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
        self.min_severity = min_severity


def nptype(trt_type: DataType):
    return {
        DataType.FLOAT: np.float32,
        DataType.HALF: np.float16,
        DataType.UINT8: np.uint8,
        DataType.INT64: np.int64,
    }[trt_type]


class Dims(tuple):
    """TensorRT's Dims: a shape, built from a list of ints."""

    def __new__(cls, shape=()):
        return super().__new__(cls, (int(size) for size in shape))


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...]):
        self.name, self.shape = name, shape


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags, self.inputs, self.onnx = flags, [], b""

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network = network

    @property
    def num_errors(self) -> int:
        return 0

    def get_error(self, index: int):
        raise IndexError(index)

    def parse_from_file(self, model: str) -> bool:
        self.network.onnx = Path(model).read_bytes()
        for arg in create_session(self.network.onnx).get_inputs():
            shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
            self.network.inputs.append(ITensor(arg.name, shape))
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        self.shapes[input] = [list(min), list(opt), list(max)]


class ITimingCache:
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data + b"+"  # one more build timed


class IBuilderConfig:
    def __init__(self) -> None:
        self.pools: dict[int, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.flags = {BuilderFlag.TF32}  # TensorRT's default
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE
        self.cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[int(pool)] = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: BuilderFlag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache.data.startswith(OTHER_GPU) and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return None if sys.modules["tensorrt"].lose_timing_cache else self.cache


class Builder:
    def __init__(self, logger: ILogger) -> None:
        pass

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        header = {
            "flags": network.flags,
            "tf32": config.get_flag(BuilderFlag.TF32),
            "profile": config.profiles[0].shapes,
            "workspace": config.pools.get(int(MemoryPoolType.WORKSPACE)),
            "hardware": int(config.hardware_compatibility_level),
            "timing_cache": config.cache is not None,
        }
        return HEADER + json.dumps(header).encode() + b"\n" + network.onnx


def read_header(plan: bytes) -> dict:
    return json.loads(plan[len(HEADER) :].split(b"\n", 1)[0])


class ICudaEngine:
    SCRATCH_BYTES = 4096  # the activations' memory every context needs

    def __init__(self, trt, plan: bytes):
        self.trt = trt
        self.header = read_header(plan)
        self.session = create_session(plan[len(HEADER) :].split(b"\n", 1)[1])
        self.args = {a.name: (a, TensorIOMode.INPUT) for a in self.session.get_inputs()}
        self.args |= {a.name: (a, TensorIOMode.OUTPUT) for a in self.session.get_outputs()}
        self.names = list(self.args)
        trt.engines += 1

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    @property
    def device_memory_size_v2(self) -> int:
        return self.SCRATCH_BYTES

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self.args[name][1]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(ORT_DTYPES[self.args[name][0].type])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in self.args[name][0].shape)

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(shape) for shape in self.header["profile"][name]]

    def create_execution_context(
        self,
        strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC,
    ) -> IExecutionContext:
        return IExecutionContext(self, strategy)

    def __del__(self) -> None:
        self.trt.engines -= 1


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy):
        self.engine, self.strategy = engine, strategy
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.memory: int | None = None if strategy == strategy.USER_MANAGED else -1
        self.generation = 0  # bumped by every shape change
        self.ready_for = -1  # the generation a plain enqueue has run with
        engine.trt.contexts += 1

    def __del__(self) -> None:
        self.engine.trt.contexts -= 1

    def set_device_memory(self, memory: int, size: int) -> None:
        if size < self.engine.device_memory_size_v2:
            raise ValueError(f"device memory of {size} bytes < {self.engine.device_memory_size_v2}")
        self.memory = memory

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.header["profile"][name]
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(low) or not all(
            lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)
        ):
            return False
        if self.shapes.get(name) != shape:
            self.shapes[name] = shape
            self.generation += 1
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.shapes:
            return self.shapes[name]
        arg = self.engine.args[name][0]
        if all(isinstance(d, int) for d in arg.shape):
            return tuple(arg.shape)
        batch = next(iter(self.shapes.values()))[0]
        return (batch, *arg.shape[1:])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = memory
        return True

    def _array(self, name: str, shapes: dict) -> np.ndarray:
        saved, self.shapes = self.shapes, shapes
        shape = self.get_tensor_shape(name)
        self.shapes = saved
        dtype = np.dtype(nptype(self.engine.get_tensor_dtype(name)))
        nbytes = math.prod(shape) * dtype.itemsize
        raw = (ctypes.c_byte * nbytes).from_address(self.addresses[name])
        return np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        trt, cudart = self.engine.trt, self.engine.trt.cudart
        engine = self.engine
        dynamic = [n for n in engine.names if -1 in engine.get_tensor_shape(n)]
        inputs = [n for n in engine.names if engine.args[n][1] == TensorIOMode.INPUT]
        if self.memory is None or any(n not in self.shapes for n in dynamic if n in inputs):
            return False
        if any(n not in self.addresses for n in engine.names):
            return False
        capturing = cudart.capturing(stream_handle)
        if capturing and (trt.fail_capture or self.ready_for != self.generation):
            cudart.invalidate_capture(stream_handle)
            return False
        if not capturing:
            self.ready_for = self.generation
        outputs = [n for n in engine.names if n not in inputs]
        shapes, generation = dict(self.shapes), self.generation

        def work():
            values = engine.session.run(outputs, {n: self._array(n, shapes).copy() for n in inputs})
            for name, value in zip(outputs, values, strict=True):
                target = self._array(name, shapes)
                if capturing and self.generation != generation:
                    target[...] = np.nan  # a graph replayed after its context changed shape
                else:
                    target[...] = value + trt.output_offset

        cudart.enqueue(stream_handle, work)
        trt.executions += 1
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine:
        trt = sys.modules["tensorrt"]
        trt.deserialized += 1
        trt.host_code_allowed |= self.engine_host_code_allowed
        return ICudaEngine(trt, bytes(serialized_engine))


def make_tensorrt(cudart: types.ModuleType, version: str = "10.13.3.9") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.cudart = cudart
    trt.deserialized = trt.executions = trt.engines = trt.contexts = 0
    trt.host_code_allowed = False  # whether any Runtime let an engine run host code
    trt.output_offset = 0.0  # a test sets it to make the "GPU" wrong
    trt.fail_capture = False  # enqueue fails while a stream captures
    trt.lose_timing_cache = False  # get_timing_cache returns None
    for value in (
        ILogger, Logger, Dims, ITensor, INetworkDefinition, OnnxParser, IOptimizationProfile,
        ITimingCache, IBuilderConfig, Builder, ICudaEngine, IExecutionContext, Runtime,
        TensorIOMode, DataType, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType,
        HardwareCompatibilityLevel, ExecutionContextAllocationStrategy, nptype,
    ):  # fmt: skip
        setattr(trt, value.__name__, value)
    return trt


def install(
    monkeypatch,
    devices: int = 1,
    capability=(9, 0),
    version="10.13.3.9",
    driver: int = 13000,
    checked: bool = False,
):
    """Fake tensorrt and cuda.bindings.runtime in sys.modules: (trt, cudart).
    `checked`: every CUDA call goes through the real cuda.bindings first
    (CheckedCudart; then `cudart.calls` lists them)."""
    real = None
    if checked:
        from cuda.bindings import runtime as real
    fake = FakeCudart(devices, capability, driver, real=real)
    cudart = CheckedCudart(real, fake) if real is not None else fake
    trt = make_tensorrt(fake, version)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in [
        ("tensorrt", trt),
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", cudart),
    ]:
        # A spec, as imported modules have (torch._dynamo looks tensorrt up with find_spec).
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        monkeypatch.setitem(sys.modules, name, module)
    return trt, cudart
