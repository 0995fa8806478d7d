"""Engines -> a Triton Inference Server model repository (`genexport triton`).

One Triton model per engine, named NAME-ROLE after the engine file
(NAME.ROLE[.fp16].onnx -> NAME-ROLE[-fp16]):

    REPO/NAME-ROLE/config.pbtxt
    REPO/NAME-ROLE/1/model.onnx     platform onnxruntime_onnx
    REPO/NAME-ROLE/1/model.plan     platform tensorrt_plan, for a TensorRT plan
                                    NAME.ROLE.plan with its sidecar NAME.ROLE.plan.json

The config comes from the manifest alone: inputs and outputs in graph order
with their dims without the batch axis (a per-item scalar such as
"temperature" or "bits_per_dim" is dims [1] reshaped to []), TYPE_UINT8 /
TYPE_FP32 / TYPE_INT64 (a conditional engine's "label"), `max_batch_size` (a
plan's profile max), dynamic batching, instance groups, and the manifest itself
as the parameter "vaeflow.manifest".
Inputs that have a default (glow density's "offset") are optional. Noise
stays an input, so a client that draws it with genrun's BlockNoise gets the
samples `genrun sample` makes for the same seed (docs/scaling.md).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from genrun.backends.sidecar import read_sidecar
from genrun.errors import UserError
from genrun.manifest import BATCH, METADATA_KEY, TensorSpec
from genrun.manifest_io import read_from_onnx, to_json

# int64: a conditional engine's labels.
TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "int64": "TYPE_INT64"}
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}


@dataclass
class TritonModel:
    """One engine as a Triton model: its name, file and config text."""

    name: str
    source: Path
    file_name: str  # model.onnx or model.plan
    config: str


def model_name(engine: Path) -> str:
    """NAME.ROLE[.fp16].onnx|.plan -> NAME-ROLE[-fp16]: Triton names allow no dots
    that the repository layout would confuse, and one name per engine."""
    return engine.name.rsplit(".", 1)[0].replace(".", "-")


def triton_model(
    engine: Path, max_batch_size: int = 256, instances: int = 1, kind: str = "auto",
    queue_delay_us: int = 100,
) -> TritonModel:  # fmt: skip
    """The Triton model of one .onnx engine or TensorRT .plan (with sidecar)."""
    if not engine.is_file():
        raise UserError(f"engine {engine} does not exist; pass .onnx engines or .plan files")
    if kind not in KINDS:
        raise UserError(f"unknown --kind {kind!r}; use one of: {', '.join(KINDS)}")
    for option, value in (("--max-batch", max_batch_size), ("--instances", instances)):
        if value < 1:
            raise UserError(f"{option} must be at least 1, got {value}")
    if engine.suffix == ".plan":
        manifest, info = read_sidecar(engine)  # checked whole, and to belong to the plan
        platform, file_name = "tensorrt_plan", "model.plan"
        max_batch_size = info.profile["max"]  # the plan serves no larger batch
        kind = "gpu"
    elif engine.suffix == ".onnx":
        manifest = read_from_onnx(engine)
        platform, file_name = "onnxruntime_onnx", "model.onnx"
    else:
        raise UserError(f"{engine} is neither an .onnx engine nor a TensorRT .plan")
    name = model_name(engine)
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch_size}",
        *_tensors("input", manifest.inputs, engine),
        *_tensors("output", manifest.outputs, engine),
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {queue_delay_us}",
        "}",
        f"instance_group [ {{ count: {instances} kind: {KINDS[kind]} }} ]",
        "parameters {",
        f'  key: "{METADATA_KEY}"',
        f"  value {{ string_value: {_quoted(to_json(manifest))} }}",
        "}",
    ]
    return TritonModel(name, engine, file_name, "\n".join(lines) + "\n")


def _tensors(what: str, specs: list[TensorSpec], engine: Path) -> list[str]:
    lines = [f"{what} ["]
    for i, spec in enumerate(specs):
        if spec.dtype not in TRITON_TYPES or not spec.shape or spec.shape[0] != BATCH:
            raise UserError(
                f"{engine}: tensor {spec.name!r} ({spec.dtype}, {spec.shape}) is not a batched "
                "uint8/float32/int64 tensor; re-export the engine with `genexport onnx`"
            )
        dims = [int(d) for d in spec.shape[1:]]
        fields = [f'name: "{spec.name}"', f"data_type: {TRITON_TYPES[spec.dtype]}"]
        # Triton needs at least one dim besides the batch: a per-item scalar is [1] -> [].
        fields.append(f"dims: {dims}" if dims else "dims: [1] reshape: { shape: [] }")
        if what == "input" and spec.default is not None:
            fields.append("optional: true")
        comma = "," if i < len(specs) - 1 else ""
        lines.append(f"  {{ {' '.join(fields)} }}{comma}")
    lines.append("]")
    return lines


def _quoted(text: str) -> str:
    """A protobuf text-format string literal (the manifest is ASCII JSON)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_repository(models: list[TritonModel], out: Path) -> list[Path]:
    """Write each model as out/NAME/config.pbtxt and out/NAME/1/model.*, each
    folder complete before it appears; an existing model folder is refused."""
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise UserError(f"two engines would share a Triton model name: {names}; rename one")
    for model in models:
        if (out / model.name).exists():
            raise UserError(f"{out / model.name} exists; pick another --out or remove it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {out} ({err.strerror}); pick a writable --out") from None
    written = []
    for model in models:
        tmp = out / f".{model.name}.{uuid.uuid4().hex}.tmp"
        try:
            (tmp / "1").mkdir(parents=True)
            shutil.copyfile(model.source, tmp / "1" / model.file_name)
            (tmp / "config.pbtxt").write_text(model.config)
            os.replace(tmp, out / model.name)
        except OSError as err:
            raise UserError(f"cannot write {out / model.name} ({err.strerror})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(out / model.name)
    return written
