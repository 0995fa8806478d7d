"""Fake `tensorrt` and `cuda.bindings.runtime` modules for CPU machines.

They implement the part of NVIDIA's APIs that genexport/tensorrt.py and
genrun/backends/ call, with ONNX Runtime CPU as the "GPU": a "plan" is a
small JSON header (the builder's flags, profile, workspace, hardware level)
followed by the ONNX bytes; "device memory" is host memory, so copies are
memmoves and a captured "CUDA graph" is the list of enqueued calls. What
these tests check is vaeflow's own logic (order of checks, buffer sizing,
slicing above the profile's max, sidecars, parity, graph replay), never
TensorRT's numbers: tests marked `gpu` do that on a real GPU.

`install(monkeypatch)` puts both in sys.modules and returns them."""

from __future__ import annotations

import ctypes
import enum
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from genrun.engine import ort_session

HEADER = b"FAKEPLAN\n"
ORT_NUMPY = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}


# --- cuda.bindings.runtime -------------------------------------------------


class cudaError_t(enum.IntEnum):  # CUDA's names
    cudaSuccess = 0
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


class FakeStream:
    def __init__(self, handle: int):
        self.handle, self.capture = handle, None

    def __int__(self) -> int:
        return self.handle


class FakeCudart(types.ModuleType):
    cudaError_t, cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode

    def __init__(self, devices: int = 1, capability: tuple[int, int] = (9, 0)):
        super().__init__("cuda.bindings.runtime")
        self.devices, self.capability = devices, capability
        self.memory: dict[int, ctypes.Array] = {}  # pointer -> its buffer, kept alive
        self.streams: dict[int, FakeStream] = {}
        self.copies = 0

    def _ok(self, *values):
        return (cudaError_t.cudaSuccess, *values)

    def _alloc(self, nbytes: int):
        buffer = ctypes.create_string_buffer(nbytes)
        self.memory[ctypes.addressof(buffer)] = buffer
        return self._ok(ctypes.addressof(buffer))

    def cudaGetDeviceCount(self):
        if self.devices == 0:
            return (cudaError_t.cudaErrorNoDevice, 0)
        return self._ok(self.devices)

    def cudaGetDeviceProperties(self, device: int):
        major, minor = self.capability
        return self._ok(SimpleNamespace(name=b"Fake GPU\x00", major=major, minor=minor))

    def cudaDriverGetVersion(self):
        return self._ok(13000)

    def cudaMalloc(self, nbytes: int):
        return self._alloc(nbytes)

    def cudaMallocHost(self, nbytes: int):
        return self._alloc(nbytes)

    def cudaFree(self, ptr: int):
        self.memory.pop(ptr)
        return self._ok()

    cudaFreeHost = cudaFree

    def cudaStreamCreate(self):
        stream = FakeStream(len(self.streams) + 1)
        self.streams[stream.handle] = stream
        return self._ok(stream)

    def cudaStreamDestroy(self, stream):
        return self._ok()

    def cudaStreamSynchronize(self, stream):
        return self._ok()

    def enqueue(self, stream, work) -> None:
        """Run `work` now, or record it while the stream is capturing."""
        captured = self.streams[int(stream)].capture
        if captured is not None:
            captured.append(work)
        else:
            work()

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind, stream):
        self.copies += 1
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))
        return self._ok()

    def cudaStreamBeginCapture(self, stream, mode):
        self.streams[int(stream)].capture = []
        return self._ok()

    def cudaStreamEndCapture(self, stream):
        captured, self.streams[int(stream)].capture = self.streams[int(stream)].capture, None
        return self._ok(captured)

    def cudaGraphInstantiate(self, graph, flags):
        return self._ok(list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):
        for work in graph_exec:
            work()
        return self._ok()

    def cudaGraphExecDestroy(self, graph_exec):
        return self._ok()

    cudaGraphDestroy = cudaGraphExecDestroy


# --- tensorrt --------------------------------------------------------------


class TensorIOMode(enum.Enum):
    INPUT = 0
    OUTPUT = 1


class FakeNetwork:
    def __init__(self, flags: int):
        self.flags, self.inputs = flags, []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int):
        return self.inputs[i]


class FakeParser:
    def __init__(self, network: FakeNetwork, logger):
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        self.network.onnx = Path(path).read_bytes()
        for arg in ort_session(self.network.onnx).get_inputs():
            shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
            self.network.inputs.append(SimpleNamespace(name=arg.name, shape=shape))
        return True


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = [list(low), list(opt), list(high)]


class FakeTimingCache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+"  # one more build timed


class FakeConfig:
    def __init__(self):
        self.pools, self.profiles, self.hardware_compatibility_level = {}, [], 0

    def set_memory_pool_limit(self, pool, size: int):
        self.pools[pool] = size

    def add_optimization_profile(self, profile: FakeProfile):
        self.profiles.append(profile)

    def create_timing_cache(self, data: bytes):
        return FakeTimingCache(data)

    def set_timing_cache(self, cache, ignore_mismatch: bool):
        self.cache = cache

    def get_timing_cache(self):
        return self.cache


class FakeBuilder:
    def __init__(self, logger):
        pass

    def create_network(self, flags: int):
        return FakeNetwork(flags)

    def create_builder_config(self):
        return FakeConfig()

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes:
        header = {
            "flags": network.flags,
            "profile": config.profiles[0].shapes,
            "workspace": config.pools.get(0),
            "hardware": config.hardware_compatibility_level,
        }
        return HEADER + json.dumps(header).encode() + b"\n" + network.onnx


def read_header(plan: bytes) -> dict:
    return json.loads(plan[len(HEADER) :].split(b"\n", 1)[0])


class FakeEngine:
    def __init__(self, trt, plan: bytes):
        self.trt = trt
        self.header = read_header(plan)
        self.session = ort_session(plan[len(HEADER) :].split(b"\n", 1)[1])
        self.args = {a.name: (a, TensorIOMode.INPUT) for a in self.session.get_inputs()}
        self.args |= {a.name: (a, TensorIOMode.OUTPUT) for a in self.session.get_outputs()}
        self.names = list(self.args)

    num_io_tensors = property(lambda self: len(self.names))

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str):
        return self.args[name][1]

    def get_tensor_dtype(self, name: str):
        return ORT_NUMPY[self.args[name][0].type]

    def get_tensor_shape(self, name: str):
        return tuple(d if isinstance(d, int) else -1 for d in self.args[name][0].shape)

    def get_tensor_profile_shape(self, name: str, profile: int):
        return [tuple(shape) for shape in self.header["profile"][name]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shapes, self.addresses = engine, {}, {}

    def set_input_shape(self, name: str, shape) -> bool:
        low, _, high = self.engine.header["profile"][name]
        if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
            raise ValueError(f"{name} shape {shape} outside the profile {low}..{high}")
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str):
        if name in self.shapes:
            return self.shapes[name]
        batch = next(iter(self.shapes.values()))[0]
        arg = self.engine.args[name][0]
        return (batch, *arg.shape[1:])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def _array(self, name: str) -> np.ndarray:
        shape = self.get_tensor_shape(name)
        dtype = np.dtype(self.engine.get_tensor_dtype(name))
        nbytes = math.prod(shape) * dtype.itemsize
        raw = (ctypes.c_byte * nbytes).from_address(self.addresses[name])
        return np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        inputs = [n for n in self.engine.names if self.engine.args[n][1] == TensorIOMode.INPUT]
        outputs = [n for n in self.engine.names if n not in inputs]
        shapes = dict(self.shapes)  # a captured call keeps the shapes of its capture

        def work():
            saved, self.shapes = self.shapes, shapes
            feeds = {n: self._array(n).copy() for n in inputs}
            for name, value in zip(outputs, self.engine.session.run(outputs, feeds), strict=True):
                self._array(name)[...] = value + self.engine.trt.output_offset
            self.shapes = saved

        self.engine.trt.cudart.enqueue(stream_handle, work)
        self.engine.trt.executions += 1
        return True


class FakeRuntime:
    def __init__(self, logger):
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, plan: bytes):
        trt = sys.modules["tensorrt"]
        trt.deserialized += 1
        return FakeEngine(trt, bytes(plan))


def make_tensorrt(cudart: FakeCudart, version: str = "10.13.3.9") -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.cudart = cudart
    trt.deserialized = trt.executions = 0
    trt.output_offset = 0.0  # a test sets it to make the "GPU" wrong
    trt.Logger = type("Logger", (), {"ERROR": 1, "WARNING": 2, "__init__": lambda s, lvl: None})
    trt.TensorIOMode = TensorIOMode
    trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE=0)
    trt.HardwareCompatibilityLevel = SimpleNamespace(NONE=0, AMPERE_PLUS=1)
    trt.Builder, trt.OnnxParser, trt.Runtime = FakeBuilder, FakeParser, FakeRuntime
    trt.nptype = lambda dtype: dtype
    return trt


def install(monkeypatch, devices: int = 1, capability=(9, 0), version="10.13.3.9"):
    """Fake tensorrt and cuda.bindings.runtime in sys.modules: (trt, cudart)."""
    cudart = FakeCudart(devices, capability)
    trt = make_tensorrt(cudart, version)
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
        monkeypatch.setitem(sys.modules, name, module)
    return trt, cudart
