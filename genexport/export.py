"""Checkpoint -> verified engine files, and re-verification of an engine.

Every graph of one call is exported, checked and verified in memory first;
only when all of them (and, for a flow, the round trip through both) meet
their bounds are the files written, each atomically. A failure leaves no file.
"""

from __future__ import annotations

import importlib.metadata
import io
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from genrun.engine import default_threads
from genrun.errors import UserError
from genrun.manifest import (
    CONDITIONAL_VERSION,
    DENSITY,
    GENERATE,
    MANIFEST_VERSION,
    SCORING_ROLES,
    CheckpointInfo,
    ClassSpec,
    ExportInfo,
    Manifest,
    Parity,
    PrecisionPlan,
    TrainingScores,
)
from genrun.manifest_io import file_sha256, graph_sha256, read_from_onnx, write_to_onnx
from genrun.readers import load_data
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.models import GenerativeModel

from .fp16 import to_float16
from .graphs import (
    MARGINAL,
    Graph,
    build_graph,
    check_actnorm_initialized,
    exportable,
    folds_actnorm,
    marginal_builder,
    pixel_mapping,
    roles,
)
from .onnx import DYNAMO, OPSETS, check_standard, opset_of, session, to_onnx, write_atomically
from .precision import BF16, MIN_SPEEDUP, reduce_to_bf16, verify_bf16
from .training_scores import measure, training_data
from .verify import merge, parity, round_trip

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass
class ExportedGraph:
    """One exported, verified ONNX graph, in memory until written to `path`
    (genrun's `Engine` is an engine file loaded for running)."""

    graph: Graph
    model: onnx.ModelProto
    precision: str
    exporter: str
    # Glow's float32 graph: nodes after folding ActNorm into the 1x1 convolutions,
    # and before (only where asked: that count costs a second export).
    nodes_folded: int | None
    nodes_unfolded: int | None
    parity: list[Parity]
    seconds: float
    path: Path
    training_scores: TrainingScores | None = None  # density, elbo: in the manifest
    training_scores_note: str = ""  # why a scoring role's manifest has none
    plan: PrecisionPlan | None = None  # bf16: which layers compute in bfloat16

    @property
    def nodes(self) -> int:
        return len(self.model.graph.node)

    def failures(self) -> list[str]:
        return [f"{self.graph.role}: {f}" for p in self.parity for f in p.failures()]


def load_trained(checkpoint: Path) -> tuple[dict, GenerativeModel]:
    """The checkpoint's payload and its model, or a one-line UserError."""
    payload = load_checkpoint(checkpoint)
    family = payload.get("family")
    if family not in exportable():
        raise UserError(
            f"{checkpoint} holds a model of unknown family {family!r}; genexport exports: "
            f"{', '.join(exportable())}"
        )
    model = model_from_checkpoint(payload)
    check_actnorm_initialized(model)
    return payload, model


def parse_roles(family: str, names: str | None) -> list[str]:
    """'generate,density' -> the roles, checked against the family's."""
    known = roles(family)
    if names is None:
        return list(known)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    for role in chosen:
        if role not in known:
            raise UserError(
                f"a {family} model has no '{role}' graph; --graphs takes a comma-separated "
                f"list of: {', '.join(known)}"
            )
    return list(dict.fromkeys(chosen))


def default_name(checkpoint: Path) -> str:
    """runs/demo/checkpoint.pt -> 'demo'; model.pt -> 'model'."""
    return checkpoint.parent.resolve().name if checkpoint.stem == "checkpoint" else checkpoint.stem


def export_checkpoint(
    checkpoint: Path,
    out: Path | None = None,
    roles: str | None = None,
    opset: int = OPSETS[0],
    precision: str = "fp32",
    name: str | None = None,
    data: str | None = None,
    marginal: bool = False,
    count_unfolded: bool = False,
    bf16_min_speedup: float = MIN_SPEEDUP,
) -> list[ExportedGraph]:
    """Export, verify and write the engines of a checkpoint; returns them.
    Density and elbo engines also carry the training split's bits/dim
    statistics (from `data`, default the checkpoint's data spec) when that
    data can be read. With `marginal` a conditional flow also gets its
    marginal density engine, NAME.marginal.onnx (log P(x), and log P(x|y) for
    every class). With `count_unfolded` a Glow's graphs are also exported
    unfolded (ActNorm apart from the 1x1 convolutions, couplings unfused),
    only to record that graph's node count in the manifest (nodes_unfolded):
    it doubles the export time, so it is asked for, not done by default.
    `bf16_min_speedup`: a bf16 engine slower than that times the fp32 one on
    this CPU is refused (0: written whatever its speed)."""
    if opset not in OPSETS:
        raise UserError(f"--opset {opset} is not supported; use one of: {_join(OPSETS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; use one of: {_join(PRECISIONS)}")
    payload, model = load_trained(checkpoint)
    out = out or checkpoint.parent
    name = name or default_name(checkpoint)
    suffix = "" if precision == "fp32" else f".{precision}"
    chosen = parse_roles(model.family, roles)
    images = bf16_images(payload, data) if precision == BF16 and DENSITY in chosen else None
    engines = [
        _export_role(
            model,
            role,
            opset,
            precision,
            out / f"{name}.{role}{suffix}.onnx",
            images=images,
            count_unfolded=count_unfolded,
            min_speedup=bf16_min_speedup,
        )
        for role in chosen
    ]
    by_role = {engine.graph.role: engine for engine in engines}
    if marginal:
        build = marginal_builder(model)
        path = out / f"{name}.{MARGINAL}{suffix}.onnx"
        engines.append(
            _export_role(
                model, MARGINAL, opset, precision, path, build, count_unfolded=count_unfolded
            )
        )
    # bf16 graphs run on OpenVINO only: each is judged in the user's terms instead.
    if {GENERATE, DENSITY} <= by_role.keys() and precision != BF16:
        generate, density = by_role[GENERATE], by_role[DENSITY]
        trip = round_trip(
            density.graph,
            session(density.model),
            generate.graph,
            session(generate.model),
            precision,
        )
        for engine in (generate, density):
            engine.parity[-1] = merge(engine.parity[-1], trip)
    failures = [failure for engine in engines for failure in engine.failures()]
    if failures:
        raise UserError(f"parity check failed, no engine written: {'; '.join(failures)}")
    info = checkpoint_info(checkpoint, payload)
    scoring = any(engine.graph.role in SCORING_ROLES for engine in engines)
    train, spec, why_not = training_data(payload, data) if scoring else (None, "", "")
    for engine in engines:
        written = manifest(model, engine, info)
        scores_images = engine.graph.role in SCORING_ROLES
        if scores_images and train is not None:
            stats = measure(engine.model, written, engine.path, train, spec)
            written.training_scores = engine.training_scores = stats
        elif scores_images:
            engine.training_scores_note = why_not
        # What the runtime checks the file against at load: every byte but the metadata.
        written.graph_sha256 = graph_sha256(io.BytesIO(engine.model.SerializeToString()))
        write_to_onnx(engine.model, written)
    write_atomically({engine.path: engine.model.SerializeToString() for engine in engines})
    return engines


def bf16_images(payload: dict, data: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(training, test) uint8 images for a bf16 density graph's checks, or
    None when the data cannot be read (the check then refuses, saying so)."""
    train, spec, _ = training_data(payload, data)
    if train is None:
        return None
    size = payload.get("train_config", {}).get("size")
    split = load_data(spec, size=size, seed=payload.get("train_config", {}).get("seed", 0))
    return split.train.images, split.test.images


def _export_role(
    model: GenerativeModel,
    role: str,
    opset: int,
    precision: str,
    path: Path,
    build: Callable[[bool], Graph] | None = None,
    images: tuple[np.ndarray, np.ndarray] | None = None,
    count_unfolded: bool = False,
    min_speedup: float = MIN_SPEEDUP,
) -> ExportedGraph:
    """One graph exported and checked; `build(fold)` makes it (default: the
    family's builder of `role`). `count_unfolded`: see export_checkpoint."""
    started = time.perf_counter()
    build = build or (lambda fold: build_graph(model, role, fold))
    graph = build(True)
    exported, exporter = to_onnx(graph, opset)
    check_standard(exported)
    nodes_folded = nodes_unfolded = None
    if folds_actnorm(model.family):
        nodes_folded = len(exported.graph.node)
        if count_unfolded:  # a second full export, for its node count alone
            nodes_unfolded = len(to_onnx(build(False), opset)[0].graph.node)
    float32 = session(exported)
    checks = [parity(graph, float32, "fp32")]
    if precision == "fp16":
        exported = to_float16(exported)
        check_standard(exported)
        checks.append(parity(graph, session(exported), "fp16", reference=float32))
    plan = None
    if precision == BF16 and not checks[0].failures():  # only a faithful fp32 graph is reduced
        reduced = reduce_to_bf16(graph, exported, images, default_threads(), min_speedup)
        exported, plan = reduced.model, reduced.plan
        checks.append(reduced.parity)
    seconds = time.perf_counter() - started
    return ExportedGraph(
        graph,
        exported,
        precision,
        exporter,
        nodes_folded,
        nodes_unfolded,
        checks,
        seconds,
        path,
        plan=plan,
    )


def checkpoint_info(checkpoint: Path, payload: dict) -> CheckpointInfo:
    return CheckpointInfo(
        file=checkpoint.name,
        sha256=file_sha256(checkpoint),
        step=int(payload.get("step", 0)),
        metrics={k: float(v) for k, v in payload.get("metrics", {}).items()},
        model_config=dict(payload["model_config"]),
        data=dict(payload.get("data", {})),
    )


def classes(model: GenerativeModel) -> list[ClassSpec] | None:
    """A conditional model's classes for its manifests (None for another)."""
    if not model.num_classes:
        return None
    names = model.config.class_names or [None] * model.num_classes
    log_prior = model.log_class_prior().tolist()
    return [ClassSpec(i, name, log_prior[i]) for i, name in enumerate(names)]


def manifest(model: GenerativeModel, engine: ExportedGraph, info: CheckpointInfo) -> Manifest:
    config = model.config
    latent_shapes = (
        [list(shape) for shape in config.latent_shapes()]
        if hasattr(config, "latent_shapes")  # one noise input per level or group
        else [[config.latent_dim]]
    )
    return Manifest(
        family=model.family,
        role=engine.graph.role,
        precision=engine.precision,
        inputs=engine.graph.inputs,
        outputs=engine.graph.outputs,
        data_shape=list(config.data_shape),
        latent_shapes=latent_shapes,
        pixels=pixel_mapping(model),
        temperature=engine.graph.temperature,
        checkpoint=info,
        parity=engine.parity,
        export=ExportInfo(
            exporter=engine.exporter,
            opset=opset_of(engine.model),
            nodes=engine.nodes,
            nodes_unfolded=engine.nodes_unfolded,
            nodes_folded=engine.nodes_folded,
            versions=library_versions(engine.exporter)
            | ({"openvino": _version("openvino")} if engine.plan else {}),
        ),
        classes=classes(model),
        version=CONDITIONAL_VERSION if model.num_classes else MANIFEST_VERSION,
        precision_plan=engine.plan,
    )


def verify_engine(engine: Path, checkpoint: Path) -> tuple[Manifest, Parity]:
    """Re-run an engine's parity check against the checkpoint it came from;
    a miss is a UserError naming every value over its bound."""
    recorded = read_from_onnx(engine)
    payload, model = load_trained(checkpoint)
    if file_sha256(checkpoint) != recorded.checkpoint.sha256:
        raise UserError(
            f"{engine} was exported from another checkpoint (sha256 "
            f"{recorded.checkpoint.sha256[:12]}..., {recorded.checkpoint.file}); pass that "
            "checkpoint with --ckpt"
        )
    graph = build_graph(model, recorded.role)
    if recorded.precision == BF16:  # the user-terms figures again, against a fresh fp32 graph
        fp32, _ = to_onnx(graph, OPSETS[0])
        images = bf16_images(payload, None) if recorded.role == DENSITY else None
        result = verify_bf16(graph, fp32, engine, images, default_threads())
    else:
        result = parity(graph, session(engine), recorded.precision)
    if result.failures():
        raise UserError(f"{engine} fails its parity check: {'; '.join(result.failures())}")
    return recorded, result


def library_versions(exporter: str) -> dict[str, str]:
    versions = {
        "vaeflow": _version("vaeflow"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if exporter == DYNAMO:
        versions["onnxscript"] = _version("onnxscript")
    return versions


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _join(values) -> str:
    return ", ".join(str(v) for v in values)
