"""cuda-python (`cuda.bindings.runtime`, the CUDA runtime API) as the TensorRT
runner needs it: the device, device buffers, pinned host buffers, a stream,
asynchronous copies and CUDA graphs. The pattern of TensorRT's
samples/python/common_runtime.py: every call returns (error, value...), and
any error other than success is raised.

Imported only when a plan loads; `cudart()` turns a missing cuda-python into
a one-line UserError naming the extra, and `current_device()` tells apart
the three ways a machine cannot run a plan: no NVIDIA driver, a driver older
than the CUDA major this cuda-bindings was built for (cuda-bindings 13 needs
a CUDA 13 driver, >= 580), and no GPU. Every call here is checked against
the real cuda.bindings module in CI (tests/test_gpu.py, up to the driver
error a machine without a GPU answers)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from . import nvidia
from .base import log

GPU_EXTRA = "pip install 'vaeflow[gpu-cu13]' ('vaeflow[gpu-cu12]' for a CUDA 12 driver)"


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
        raise RuntimeError(f"CUDA error {_name(error)}")
    return values[0] if len(values) == 1 else (values or None)


def _name(error: Any) -> str:
    return getattr(error, "name", str(error))


@dataclass
class Device:
    name: str
    capability: tuple[int, int]  # compute capability (major, minor)
    driver: str  # the CUDA version the driver supports, e.g. "13.0"


def current_device() -> Device:
    """GPU 0, or a one-line UserError saying which of driver, driver version
    and GPU is missing."""
    runtime = cudart()
    result = runtime.cudaGetDeviceCount()
    count = result[1] if result[0] == runtime.cudaError_t.cudaSuccess else 0
    if not count:
        raise UserError(_no_gpu(runtime, result[0]))
    props = call(runtime.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    driver = call(runtime.cudaDriverGetVersion())
    return Device(name.rstrip("\x00"), (props.major, props.minor), nvidia.version_text(driver))


def _no_gpu(runtime: Any, error: Any) -> str:
    """The user's one line for a failed device count."""
    driver = runtime.cudaDriverGetVersion()
    driver = driver[1] if driver[0] == runtime.cudaError_t.cudaSuccess else 0
    built = runtime.cudaRuntimeGetVersion()
    built = built[1] if built[0] == runtime.cudaError_t.cudaSuccess else 0
    elsewhere = "on this machine run the .onnx engine instead (--provider cpu)"
    if not driver:
        return (
            f"no NVIDIA driver found ({_name(error)}): a TensorRT plan runs on an NVIDIA GPU "
            f"with its driver installed; {elsewhere}"
        )
    if built and driver // 1000 < built // 1000:
        return (
            f"the NVIDIA driver is too old ({_name(error)}): it supports CUDA "
            f"{nvidia.version_text(driver)}, this cuda-bindings needs CUDA "
            f"{built // 1000}; install the CUDA {driver // 1000} build (pip install "
            f"'vaeflow[gpu-cu{driver // 1000}]') or update the driver"
        )
    return (
        f"no CUDA GPU found ({_name(error)}): the NVIDIA driver (CUDA "
        f"{nvidia.version_text(driver)}) sees none; check CUDA_VISIBLE_DEVICES, or {elsewhere}"
    )


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
        self.array = np.frombuffer(memoryview(raw), np.uint8, self.nbytes).view(self.dtype)

    def free(self) -> None:
        del self.array  # no view of freed memory outlives it
        call(cudart().cudaFreeHost(self.ptr))


def copy_to_device(device: DeviceBuffer, host: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    kind = cudart().cudaMemcpyKind.cudaMemcpyHostToDevice
    call(cudart().cudaMemcpyAsync(device.ptr, host.ptr, nbytes, kind, stream.handle))


def copy_to_host(host: PinnedBuffer, device: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    kind = cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost
    call(cudart().cudaMemcpyAsync(host.ptr, device.ptr, nbytes, kind, stream.handle))


class CudaGraph:
    """The work an enqueue puts on a stream, captured once and replayed with
    one launch (what saves the per-kernel launch cost at small batches).
    Build it with `capture`."""

    def __init__(self, graph: Any, executable: Any):
        self.graph, self.exec = graph, executable

    def launch(self, stream: Stream) -> None:
        call(cudart().cudaGraphLaunch(self.exec, stream.handle))

    def free(self) -> None:
        call(cudart().cudaGraphExecDestroy(self.exec))
        call(cudart().cudaGraphDestroy(self.graph))


def capture(enqueue: Callable[[], bool], stream: Stream, what: str) -> CudaGraph | None:
    """The CUDA graph of `enqueue()` on `stream`, or None when it cannot be
    captured: `enqueue` returned False, or ending or instantiating the capture
    failed. Then the capture is ended, the error cleared (cudaGetLastError)
    and `what` said once on stderr; the caller runs without a graph."""
    runtime = cudart()
    mode = runtime.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    call(runtime.cudaStreamBeginCapture(stream.handle, mode))
    enqueued = False
    try:
        enqueued = bool(enqueue())
    finally:  # a capture is always ended, even when enqueue raised
        ended = runtime.cudaStreamEndCapture(stream.handle)
    error, graph = ended[0], ended[1]
    captured = error == runtime.cudaError_t.cudaSuccess and graph is not None
    reason = _name(error) if enqueued else "enqueue failed"
    if enqueued and captured:
        instantiated = runtime.cudaGraphInstantiate(graph, 0)
        if instantiated[0] == runtime.cudaError_t.cudaSuccess:
            return CudaGraph(graph, instantiated[1])
        reason = _name(instantiated[0])
    if captured:
        runtime.cudaGraphDestroy(graph)
    runtime.cudaGetLastError()  # clear the error the failed capture left
    log.warning(
        "%s could not be captured as a CUDA graph (%s); running it without one", what, reason
    )
    return None
