"""Why a GPU path cannot run here, in words a user can act on: no NVIDIA
driver, a driver older than the CUDA the packages were built for, or a
missing CUDA / cuDNN / TensorRT library. Read with ctypes only (no CUDA
package needed), so the answer is available exactly when something failed.

The extras of pyproject.toml pair one CUDA major each: `[gpu-cu12]` and
`[gpu-cu13]` (onnxruntime-gpu with its CUDA and cuDNN wheels, cuda-bindings),
`[tensorrt-cu12]` and `[tensorrt-cu13]` (+ TensorRT)."""

from __future__ import annotations

import ctypes
import re

DRIVER_LIBRARY = "libcuda.so.1"
# What each library belongs to, by the start of its file name.
LIBRARY_OWNERS = {
    "libcudnn": "cuDNN 9",
    "libnvinfer": "TensorRT",
    "libnvonnxparser": "TensorRT",
    "libcublas": "the CUDA {cuda} libraries (cuBLAS)",
    "libcudart": "the CUDA {cuda} runtime",
    "libcufft": "the CUDA {cuda} libraries (cuFFT)",
    "libcurand": "the CUDA {cuda} libraries (cuRAND)",
    "libnvrtc": "the CUDA {cuda} libraries (NVRTC)",
}


def gpu_extra(cuda_major: int | str | None) -> str:
    """The pip command of the extra for one CUDA major (13 when unknown)."""
    major = str(cuda_major or 13).split(".")[0]
    return f"pip install 'vaeflow[gpu-cu{major if major in ('12', '13') else '13'}]'"


def missing_library(path: str) -> str | None:
    """The library `path` needs that cannot be found (its file name), the
    loader's message for another failure, or None when `path` loads (a symbol
    it expects its host process to provide does not count as missing)."""
    try:
        ctypes.CDLL(path)
    except OSError as err:
        text = str(err)
        if "undefined symbol" in text:
            return None
        found = re.search(r"([\w.+-]+\.so[\w.]*): cannot open shared object file", text)
        return found.group(1) if found else text.splitlines()[0][:160]
    return None


def owner(library: str, cuda: str | None = None) -> str:
    """'cuDNN 9', 'TensorRT', 'the CUDA 13 libraries (cuBLAS)' or the file name."""
    for prefix, what in LIBRARY_OWNERS.items():
        if library.startswith(prefix):
            return what.format(cuda=(cuda or "").split(".")[0] or "").replace("  ", " ")
    return library


def driver_cuda_version() -> int | None:
    """The CUDA version the installed driver supports (e.g. 12080 for 12.8),
    0 when it cannot say, None when there is no NVIDIA driver at all."""
    try:
        driver = ctypes.CDLL(DRIVER_LIBRARY)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if driver.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return 0
    return version.value


def version_text(version: int) -> str:
    """12080 -> '12.8' (CUDA's encoding: 1000 * major + 10 * minor)."""
    return f"{version // 1000}.{version % 1000 // 10}"


def driver_problem(needs: str | None) -> str | None:
    """'no NVIDIA driver (libcuda.so.1 not found)', 'the NVIDIA driver supports
    CUDA 12.8, older than the CUDA 13.0 these packages were built for', or None
    when the driver is there and new enough (then the GPU itself is missing)."""
    version = driver_cuda_version()
    if version is None:
        return f"no NVIDIA driver ({DRIVER_LIBRARY} not found)"
    if needs and version:
        major, minor = (int(part) for part in [*needs.split("."), "0"][:2])
        if version < 1000 * major + 10 * minor:
            return (
                f"the NVIDIA driver supports CUDA {version_text(version)}, older than the "
                f"CUDA {major}.{minor} these packages were built for"
            )
    return None
