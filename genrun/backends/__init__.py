"""Runtimes that execute an engine file, one module per runtime (Polygraphy's
backend/ layout). Each exposes `load(path, LoadOptions) -> Runner`, which
opens the file and builds what runs it (an ONNX Runtime session, a
deserialised TensorRT engine with its buffers), and a runner (base.py): a
context manager whose `run(feeds) -> {name: array}` is all
`genrun.engine.Engine` calls and whose `close()` frees what it holds.

  base.py         the Runner contract and LoadOptions
  onnxruntime.py  .onnx files: ONNX Runtime on the cpu, cuda or tensorrt
                  execution provider (the one place genrun and genexport
                  create ONNX Runtime sessions: `create_session`), with the
                  provider that actually runs read back from the session
  tensorrt.py     .plan files: TensorRT engines, with cuda-python for device
                  memory, pinned host memory, streams and CUDA graphs
  cuda_memory.py  the cuda-python (cuda.bindings) pieces tensorrt.py uses
  sidecar.py      NAME.ROLE.plan.json: the manifest and build facts of a plan
  openvino.py     .onnx files of precision bf16 (genexport --precision bf16):
                  OpenVINO on x86 CPUs with AMX or AVX512-BF16 (extra "openvino")
  nvidia.py       what is missing when a GPU path cannot run (driver, CUDA,
                  cuDNN, TensorRT libraries), read with ctypes

GPU packages are imported only when a GPU backend loads, so the base install
never needs them; a missing one is a one-line UserError naming the extra
that installs it.
"""

from __future__ import annotations

# The one dispatch table: an engine file's suffix -> the module of this
# package that loads it (anything else is tried as ONNX). An ONNX file whose
# manifest says bf16 is handed on by onnxruntime.load to openvino.load (ONNX
# Runtime's CPU provider has no bfloat16 convolution), with the manifest it read.
BACKENDS = {".onnx": "onnxruntime", ".plan": "tensorrt"}
