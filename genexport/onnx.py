"""PyTorch module -> checked, self-contained ONNX graph; sessions; atomic writes.

Export goes through torch.export (`dynamo=True`, the default of torch >= 2.9)
with one dynamic batch axis shared by every input and output; only when that
exporter fails (for instance when onnxscript is missing) does the TorchScript
exporter take over, and the manifest records which one wrote the graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import numpy_helper
from torch.utils import _pytree as pytree

from genrun.atomic import write_all_atomic
from genrun.backends.onnxruntime import create_session

from .graphs import BATCH, Graph

OPSETS = (18, 19, 20)
DYNAMO, TORCHSCRIPT = "torch.onnx dynamo", "torch.onnx torchscript"
STANDARD_DOMAINS = ("", "ai.onnx")
EXAMPLE_BATCH = 2  # torch.export specialises sizes 0 and 1, so trace at 2


class ExportFailure(Exception):
    """The exported graph is not what an engine must be (a bug, not user input)."""


def to_onnx(graph: Graph, opset: int) -> tuple[onnx.ModelProto, str]:
    """Export `graph.module` with a dynamic batch axis; (model, exporter name).
    Inputs that have a default (`TensorSpec.default`) become overridable
    initializers of batch size 1, so callers may leave them out."""
    module = graph.module.eval()
    example = graph.sample_inputs(EXAMPLE_BATCH, torch.Generator().manual_seed(0))
    names = dict(
        input_names=[spec.name for spec in graph.inputs],
        output_names=[spec.name for spec in graph.outputs],
        opset_version=opset,
    )
    with _quiet_exporter():
        try:
            batch = torch.export.Dim(BATCH, min=1, max=1 << 20)
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                verbose=False,
                dynamic_shapes=pytree.tree_map(lambda _: {0: batch}, example),
                **names,
            )
            model, exporter = program.model_proto, DYNAMO
        except Exception as err:
            logging.getLogger(__name__).warning(
                "dynamo export failed (%s); using the TorchScript exporter", type(err).__name__
            )
            buffer = io.BytesIO()
            axes = {spec.name: {0: BATCH} for spec in [*graph.inputs, *graph.outputs]}
            torch.onnx.export(module, example, buffer, dynamo=False, dynamic_axes=axes, **names)
            model, exporter = onnx.load_from_string(buffer.getvalue()), TORCHSCRIPT
    _add_input_defaults(model, graph)
    return model, exporter


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters narrate every step and warn about things that do not
    concern an engine (torchvision ops, axis renames): keep the CLI's output
    to its table."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _add_input_defaults(model: onnx.ModelProto, graph: Graph) -> None:
    for spec in graph.inputs:
        if spec.default is not None:
            shape = [1, *spec.shape[1:]]
            value = np.full(shape, spec.default, dtype=spec.dtype)
            model.graph.initializer.append(numpy_helper.from_array(value, spec.name))


def check_standard(model: onnx.ModelProto) -> None:
    """onnx.checker's full check (with shape inference), and only standard
    ONNX operators: any vendor domain would tie the engine to one runtime."""
    onnx.checker.check_model(model, full_check=True)
    domains = {node.domain for node in model.graph.node}
    domains |= {entry.domain for entry in model.opset_import}
    foreign = sorted(domains - set(STANDARD_DOMAINS))
    if foreign or model.functions:
        raise ExportFailure(
            f"the graph uses non-standard operators (domains {foreign}, "
            f"{len(model.functions)} local functions)"
        )


def opset_of(model: onnx.ModelProto) -> int:
    return next(entry.version for entry in model.opset_import if entry.domain in STANDARD_DOMAINS)


def session(model: onnx.ModelProto | str | Path) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session, quiet about overridable initializers (the
    graphs' optional inputs are exactly that)."""
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else Path(model)
    return create_session(source)  # genrun.backends.onnxruntime: the one place sessions are made


def write_atomically(files: dict[Path, bytes]) -> None:
    """Write every file or none (genrun.atomic.write_all_atomic)."""
    write_all_atomic(files)
