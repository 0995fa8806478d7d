"""What a graph costs and what the machine can do: counted FLOPs per sample
and a measured float32 matrix-multiply peak, for `genrun bench`'s GFLOP/s
and share-of-peak columns.

FLOPs are 2 x the multiply-accumulates of the Conv, ConvTranspose, MatMul and
Gemm nodes (the work a convolutional generative model spends its time on;
element-wise ops, reductions and biases are not counted), with tensor shapes
from onnx shape inference at batch 1. `onnx` is imported only here, when
counting: the rest of genrun runs without it."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def count_flops(path: str | Path) -> int:
    """FLOPs of one sample (batch 1) through the graph in `path`. Raises
    ValueError naming the node whose shapes shape inference could not fix."""
    import onnx

    return sum(node_flops(onnx.load(str(path))).values())


def node_flops(model) -> dict[str, int]:
    """FLOPs of one sample through each counted node of an onnx.ModelProto
    (by node name, or "OpType#index" for an unnamed or repeated name; the
    model is not changed)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    for value in model.graph.input:  # the dynamic leading axis is the batch: 1
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    shapes = {
        value.name: [d.dim_value if d.HasField("dim_value") else None for d in _dims(value)]
        for value in [*graph.input, *graph.value_info, *graph.output]
    }
    shapes.update({init.name: list(init.dims) for init in graph.initializer})
    flops: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        if node.op_type in COUNTED_OPS:
            key = node.name if node.name and node.name not in flops else f"{node.op_type}#{i}"
            flops[key] = 2 * _macs(node, shapes)
    return flops


def _dims(value) -> list:
    return list(value.type.tensor_type.shape.dim)


def _macs(node, shapes: dict[str, list[int | None]]) -> int:
    """Multiply-accumulates of one node, from its input and output shapes."""
    names = [node.input[0], node.input[1], node.output[0]]
    a, b, out = (shapes.get(name) for name in names)
    if any(shape is None or None in shape for shape in (a, b, out)):
        raise ValueError(f"{node.op_type} node {node.name!r}: shapes unknown after inference")
    # Conv W is (M, C/group, k...): each output element takes C/group x kernel MACs.
    # ConvTranspose W is (C, M/group, k...): each input element gives M/group x kernel.
    if node.op_type == "Conv":
        return math.prod(out) * math.prod(b[1:])
    if node.op_type == "ConvTranspose":
        return math.prod(a) * math.prod(b[1:])
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans_a else a[1])
    return math.prod(out) * a[-1]  # MatMul: (..., m, k) @ (..., k, n)


def matmul_peak_gflops(
    threads: int | None = None,
    size: int = 2048,
    calls: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """The machine's float32 matrix-multiply rate in GFLOP/s: the median of
    `calls` timed size x size numpy matmuls (after one warm-up) on `threads`
    BLAS threads (None: numpy's default), timed by `clock` (genrun.bench.time_calls
    says when CPU time is the fairer one). Thread limits need threadpoolctl;
    without it numpy's own thread count is used."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a genrun dependency; scikit-learn brings it
        threads = None
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    times = []
    with threadpool_limits(threads, user_api="blas") if threads else contextlib.nullcontext():
        a @ b  # warm-up: BLAS thread start, page faults
        for _ in range(calls):
            started = clock()
            a @ b
            times.append(clock() - started)
    return 2 * size**3 / float(np.median(times)) / 1e9
