"""The sidecar of a TensorRT plan: `NAME.ROLE[.fp16].plan.json` beside the plan.

A `.plan` is TensorRT's serialised engine, bytes no other tool may find
prepended to it (trtexec, Triton and Polygraphy load it as it is), so what
vaeflow knows about it travels beside it, one JSON object with two keys:

vaeflow.manifest   the engine manifest of the ONNX graph the plan was built
                   from (genrun/manifest.py, the same schema and version as
                   in the .onnx), its parity list extended by the plan's
                   check against that graph in ONNX Runtime CPU
                   (reference "onnxruntime-cpu").
vaeflow.plan       PlanInfo below: what the plan needs to be loaded, read
                   before TensorRT deserialises it, so a mismatch is one line
                   naming both sides instead of a TensorRT error.

PlanInfo fields (version PLAN_VERSION)
--------------------------------------
version            int, PLAN_VERSION; a reader refuses any other.
tensorrt           TensorRT version that built the plan ("10.13.3.9"); a plan
                   loads only in the same major.minor.patch.
gpu                name of the GPU it was built on.
compute_capability "major.minor" of that GPU ("9.0").
hardware_compat    "none" (only GPUs of that compute capability) or
                   "ampere+" (built with HardwareCompatibilityLevel.AMPERE_PLUS:
                   any GPU of compute capability >= 8.0).
profile            {"min", "opt", "max"}: the batch sizes of the plan's one
                   optimisation profile.
precision          "fp32" or "fp16" (from the graph: the network is strongly typed).
plan_sha256        sha256 of the .plan file; a mismatch means the two files
                   do not belong together.
onnx_file, onnx_sha256  the ONNX engine it was built from.
workspace_gib      the builder's workspace limit.
tf32               whether float32 layers may use TF32 (false: vaeflow clears
                   TensorRT's TF32 flag, on by default, so an fp32 plan is held
                   to the float32 bounds; sidecars without it were built before
                   the flag was cleared and read as true).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..manifest import METADATA_KEY, Manifest
from ..manifest_io import file_sha256, from_values, to_values
from ..typed_json import Malformed, parse, refusal

PLAN_VERSION = 1
PLAN_KEY = "vaeflow.plan"
HARDWARE_COMPAT = ("none", "ampere+")
AMPERE = (8, 0)


@dataclass
class PlanInfo:
    tensorrt: str
    gpu: str
    compute_capability: str
    hardware_compat: str
    profile: dict[str, int]
    precision: str
    plan_sha256: str
    onnx_file: str
    onnx_sha256: str
    workspace_gib: float
    tf32: bool = True  # what a sidecar written before this field meant
    version: int = field(default=PLAN_VERSION)


def sidecar_path(plan: Path) -> Path:
    return plan.with_name(plan.name + ".json")


def to_text(manifest: Manifest, info: PlanInfo) -> str:
    return json.dumps(
        {METADATA_KEY: to_values(manifest), PLAN_KEY: asdict(info)},
        indent=1,
        sort_keys=True,
    )


def read_sidecar(plan: Path, check_sha256: bool = True) -> tuple[Manifest, PlanInfo]:
    """The manifest and PlanInfo of a plan file, checked to belong to it."""
    path = sidecar_path(plan)
    if not path.is_file():
        raise UserError(
            f"{plan} has no sidecar {path.name} (its manifest and build facts); rebuild the "
            "plan with `genexport tensorrt`, which writes both"
        )
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not readable JSON ({err}); rebuild the plan") from None
    if not isinstance(values, dict) or not {METADATA_KEY, PLAN_KEY} <= values.keys():
        raise UserError(
            f"{path} is not a vaeflow plan sidecar (keys {METADATA_KEY!r} and {PLAN_KEY!r}); "
            "rebuild the plan with `genexport tensorrt`"
        )
    manifest = from_values(values[METADATA_KEY], source=str(path))
    info = _plan_info(values[PLAN_KEY], path)
    if check_sha256 and file_sha256(plan) != info.plan_sha256:
        raise UserError(
            f"{plan}'s sha256 is not the one its sidecar {path.name} records "
            f"({info.plan_sha256[:12]}...): the two files do not belong together; rebuild the "
            "plan with `genexport tensorrt`"
        )
    return manifest, info


def check_compatible(
    plan: Path, info: PlanInfo, tensorrt: str, capability: tuple[int, int]
) -> None:
    """Refuse, before deserialising, a plan built by another TensorRT version
    or for a GPU this one is not (`capability` is this GPU's compute capability)."""
    if _release(tensorrt) != _release(info.tensorrt):
        raise UserError(
            f"{plan} was built by TensorRT {info.tensorrt}, this is TensorRT {tensorrt}; a plan "
            "loads only in the TensorRT that built it: rebuild it here with `genexport tensorrt`"
        )
    built = tuple(int(part) for part in info.compute_capability.split("."))
    here = ".".join(str(part) for part in capability)
    if info.hardware_compat == "ampere+":
        if capability < AMPERE:
            raise UserError(
                f"{plan} was built for Ampere and newer GPUs (compute capability >= 8.0), this "
                f"GPU is {here}; rebuild it here with `genexport tensorrt`"
            )
    elif capability != built:
        raise UserError(
            f"{plan} was built for a GPU of compute capability {info.compute_capability} "
            f"({info.gpu}), this GPU is {here}; rebuild it here with `genexport tensorrt`, or "
            "build with --hardware-compat ampere+ to run on every Ampere or newer GPU"
        )


def _release(version: str) -> tuple[str, ...]:
    """'10.13.3.9' -> ('10', '13', '3'): the part a plan must match."""
    return tuple(version.split(".")[:3])


def _plan_info(values: Any, path: Path) -> PlanInfo:
    if not isinstance(values, dict) or values.get("version") != PLAN_VERSION:
        version = values.get("version") if isinstance(values, dict) else None
        raise UserError(
            f"{path} has plan info version {version!r}, this vaeflow reads version "
            f"{PLAN_VERSION}; rebuild the plan with this vaeflow's `genexport tensorrt`"
        )
    malformed, fix = f"{path} holds malformed plan info", "rebuild the plan"
    info = parse(PlanInfo, values, malformed, fix)
    try:  # what types alone do not say
        _check_plan_info(info)
    except Malformed as err:
        raise refusal(malformed, err, fix) from None
    return info


def _check_plan_info(info: PlanInfo) -> None:
    """What types alone do not say: the choices, the profile's three batch
    sizes, a "major.minor" compute capability."""
    if info.hardware_compat not in HARDWARE_COMPAT:
        raise Malformed(
            f"hardware_compat = {info.hardware_compat!r:.30} is not one of {HARDWARE_COMPAT}"
        )
    if sorted(info.profile) != ["max", "min", "opt"]:
        raise Malformed(f"profile = {info.profile!r:.60} is not {{min, opt, max}}")
    if not re.fullmatch(r"\d+\.\d+", info.compute_capability):
        raise Malformed(f"compute_capability = {info.compute_capability!r:.30} is not major.minor")
