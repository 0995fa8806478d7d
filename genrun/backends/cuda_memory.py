"""cuda-python (`cuda.bindings.runtime`, the CUDA runtime API) as the TensorRT
runner needs it: the device, device buffers, pinned host buffers, a stream,
asynchronous copies and CUDA graphs. The pattern of TensorRT's
samples/python/common_runtime.py: every call returns (error, value...), and
any error other than success is raised.

Imported only when a plan loads; `cudart()` turns a missing cuda-python into
a one-line UserError naming the extra."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError

GPU_EXTRA = "pip install 'vaeflow[gpu]'"


def cudart() -> Any:
    """The CUDA runtime bindings, or a UserError naming the extra."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:  # cuda-python < 12.6 kept them here
            from cuda import cudart as runtime
        except ImportError:
            raise UserError(
                f"running a TensorRT plan needs cuda-python (CUDA memory and streams): {GPU_EXTRA}"
            ) from None
    return runtime


def call(result: Any) -> Any:
    """Unpack (error, *values) from a cuda.bindings call; raise on an error."""
    runtime = cudart()
    error, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if error != runtime.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else (values or None)


@dataclass
class Device:
    name: str
    capability: tuple[int, int]  # compute capability (major, minor)
    driver: str  # CUDA driver API version, e.g. "13.0"


def current_device() -> Device:
    """GPU 0, or a one-line UserError when there is no GPU or driver."""
    runtime = cudart()
    result = runtime.cudaGetDeviceCount()
    count = result[1] if result[0] == runtime.cudaError_t.cudaSuccess else 0
    if count < 1:
        raise UserError(
            f"no CUDA GPU found ({result[0]}): a TensorRT plan runs on an NVIDIA GPU with its "
            "driver installed; on this machine run the .onnx engine instead (--provider cpu)"
        )
    props = call(runtime.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    driver = call(runtime.cudaDriverGetVersion())
    version = f"{driver // 1000}.{driver % 1000 // 10}"
    return Device(name.rstrip("\x00"), (props.major, props.minor), version)


class Stream:
    def __init__(self) -> None:
        self.handle = call(cudart().cudaStreamCreate())

    def synchronize(self) -> None:
        call(cudart().cudaStreamSynchronize(self.handle))

    def free(self) -> None:
        call(cudart().cudaStreamDestroy(self.handle))


class DeviceBuffer:
    """nbytes of device memory, allocated once."""

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.ptr = int(call(cudart().cudaMalloc(max(nbytes, 1))))

    def free(self) -> None:
        call(cudart().cudaFree(self.ptr))


class PinnedBuffer:
    """Page-locked host memory seen as a flat numpy array of `dtype` (what
    asynchronous copies need to overlap with compute)."""

    def __init__(self, size: int, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nbytes = size * self.dtype.itemsize
        self.ptr = int(call(cudart().cudaMallocHost(max(self.nbytes, 1))))
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.ptr)
        self.array = np.frombuffer(raw, np.uint8, self.nbytes).view(self.dtype)

    def free(self) -> None:
        call(cudart().cudaFreeHost(self.ptr))


def copy_to_device(device: DeviceBuffer, host: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    kind = cudart().cudaMemcpyKind.cudaMemcpyHostToDevice
    call(cudart().cudaMemcpyAsync(device.ptr, host.ptr, nbytes, kind, stream.handle))


def copy_to_host(host: PinnedBuffer, device: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    kind = cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost
    call(cudart().cudaMemcpyAsync(host.ptr, device.ptr, nbytes, kind, stream.handle))


class CudaGraph:
    """The work `enqueue(stream)` puts on a stream, captured once and replayed
    with one launch (what saves the per-kernel launch cost at small batches)."""

    def __init__(self, enqueue, stream: Stream):
        runtime = cudart()
        mode = runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        call(runtime.cudaStreamBeginCapture(stream.handle, mode))
        try:
            enqueue()
        finally:
            self.graph = call(runtime.cudaStreamEndCapture(stream.handle))
        self.exec = call(runtime.cudaGraphInstantiate(self.graph, 0))

    def launch(self, stream: Stream) -> None:
        call(cudart().cudaGraphLaunch(self.exec, stream.handle))

    def free(self) -> None:
        call(cudart().cudaGraphExecDestroy(self.exec))
        call(cudart().cudaGraphDestroy(self.graph))
