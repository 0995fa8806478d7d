"""Runtimes that execute an engine file, one module per runtime (Polygraphy's
backend/ layout): each has a loader, which opens the file and builds what
runs it (an ONNX Runtime session, a deserialised TensorRT engine with its
buffers), apart from a runner, whose `run(feeds) -> {name: array}` is all
`genrun.engine.Engine` calls.

  onnxruntime.py  .onnx files: ONNX Runtime on the cpu, cuda or tensorrt
                  execution provider (the one place genrun and genexport
                  create ONNX Runtime sessions: `create_session`)
  tensorrt.py     .plan files: TensorRT engines, with cuda-python for device
                  memory, pinned host memory, streams and CUDA graphs
  cuda_memory.py  the cuda-python (cuda.bindings) pieces tensorrt.py uses
  sidecar.py      NAME.ROLE.plan.json: the manifest and build facts of a plan

GPU packages are imported only when a GPU backend loads, so the base install
(numpy, onnxruntime) never needs them; a missing one is a one-line UserError
naming the extra that installs it.
"""

from __future__ import annotations

# Engine files by suffix -> the backend module that runs them.
BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".plan": "tensorrt"}
