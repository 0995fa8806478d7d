"""float32 ONNX graph -> float16 graph with float32 inputs, outputs and sums.

The rule: every float tensor becomes float16, except a reduction (ReduceSum
and kin), which casts its input up and reduces in float32, and every node
that consumes such a float32 result, which also runs in float32. So the bulk
of the work (convolutions, couplings) runs in float16 while per-image sums
(log-dets, log-likelihoods, bits/dim) are accumulated in float32: a float16
sum of hundreds of nats would lose whole hundredths.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
REDUCTIONS = {
    "CumSum",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMean",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
}


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of `model` under the rule above; graph inputs and
    outputs keep their float32 types."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = model.graph
    _constants_to_initializers(graph)
    types = _element_types(graph)
    inputs = {value.name for value in graph.input}
    initializers = {init.name: init for init in graph.initializer if init.name not in inputs}
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == FLOAT}
    # Graph outputs get their float32 casts at the end: compute into a twin.
    body = {name: f"{name}__body" for name in outputs}
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name in body:
                    names[i] = body[name]
    types.update({twin: types[name] for name, twin in body.items()})
    # Float tensors stored as float32: the graph's inputs, and what the rule keeps.
    # Only the latter pull their consumers into float32.
    precise: set[str] = set()
    stored32 = {name for name in inputs if types.get(name) == FLOAT}
    casts: dict[tuple[str, int], str] = {}
    halved: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], to=to))
        return casts[key]

    def as_half(name: str) -> str:
        if name in initializers:
            if name not in halved:
                halved[name] = f"{name}__fp16"
                array = numpy_helper.to_array(initializers[name])
                graph.initializer.append(numpy_helper.from_array(_half(array), halved[name]))
            return halved[name]
        return cast(name, HALF) if name in stored32 else name

    def as_full(name: str) -> str:
        return name if name in stored32 or name in initializers else cast(name, FLOAT)

    for node in list(graph.node):
        floats = [i for i, name in enumerate(node.input) if name and types.get(name) == FLOAT]
        keep32 = node.op_type in REDUCTIONS or any(node.input[i] in precise for i in floats)
        for i in floats:
            node.input[i] = (as_full if keep32 else as_half)(node.input[i])
        if keep32:
            kept = [name for name in node.output if types.get(name) == FLOAT]
            precise.update(kept)
            stored32.update(kept)
        else:
            _retype_to_half(node)
        nodes.append(node)
    for name, twin in body.items():
        nodes.append(
            helper.make_node("Identity", [twin], [name])
            if twin in stored32
            else helper.make_node("Cast", [twin], [name], to=FLOAT)
        )
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _half(array: np.ndarray) -> np.ndarray:
    """float16 without overflowing to inf where a float32 constant is huge."""
    limit = np.finfo(np.float16).max
    return np.clip(array, -limit, limit).astype(np.float16)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Float Constant nodes become initializers, so each use can take the
    precision it needs (a float32 sum should not add a float16-rounded constant)."""
    kept = []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.t.data_type == FLOAT:
            graph.initializer.append(
                numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            )
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _element_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {init.name: init.data_type for init in graph.initializer}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        types[value.name] = value.type.tensor_type.elem_type
    return types


def _retype_to_half(node: onnx.NodeProto) -> None:
    """Attributes that name float32 as a type or hold a float32 value."""
    for attribute in node.attribute:
        if node.op_type == "Cast" and attribute.name == "to" and attribute.i == FLOAT:
            attribute.i = HALF
        elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            array = _half(numpy_helper.to_array(attribute.t))
            attribute.t.CopyFrom(numpy_helper.from_array(array, attribute.t.name))


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    used |= {value.name for value in graph.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
