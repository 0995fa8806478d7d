"""The training split's bits/dim, measured at export through the engine itself,
for the manifest's `training_scores` (what genrun's typicality score compares
with, Nalisnick et al. 2019).

The figures come from genrun's own `Scorer` running the verified ONNX graph, so
they are exactly what `genrun likelihood` computes for a training image (same
bound, same K, same seeded draws), not PyTorch's nearby numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from genrun.backends.onnxruntime import OnnxRuntimeRunner
from genrun.backends.openvino import load_openvino
from genrun.engine import Engine as RuntimeEngine
from genrun.engine import default_threads
from genrun.errors import UserError
from genrun.manifest import Manifest, TrainingScores
from genrun.manifest_io import write_to_onnx
from genrun.readers import ImageSet, load_data
from genrun.scorer import Scorer

from .onnx import session

MAX_IMAGES = 1000  # the first this many training images ...
MAX_ROWS = 20_000  # ... or fewer, so that images x K stays within this many graph rows
SEED = 0


def training_data(payload: dict, data: str | None) -> tuple[ImageSet | None, str, str]:
    """(training images and labels or None, the spec, why not) from `data` or
    the checkpoint's own data spec, at the checkpoint's image shape."""
    recorded = payload.get("data", {})
    spec = data or recorded.get("spec")
    if not spec:
        return None, "", "the checkpoint names no training data; pass --data"
    shape = tuple(recorded.get("shape", ()))
    size = payload.get("train_config", {}).get("size")
    try:
        split = load_data(spec, size=size, seed=payload.get("train_config", {}).get("seed", 0))
    except UserError as err:
        return None, spec, f"{err}; pass --data with the training images"
    if shape and split.shape != shape:
        return None, spec, f"{spec} holds images of shape {split.shape}, the model {shape}"
    return split.train, spec, ""


def measure(
    model: onnx.ModelProto, manifest: Manifest, path: Path, train: ImageSet, spec: str
) -> TrainingScores:
    """TrainingScores of the first training images under the engine `model`
    with its `manifest` (also written into it); an engine with a label input
    scores them given their labels."""
    write_to_onnx(model, manifest)
    threads = default_threads()
    if manifest.precision == "bf16":  # bfloat16 layers run on OpenVINO (ONNX Runtime has none)
        runner = load_openvino(model.SerializeToString(), threads, path=path, manifest=manifest)
    else:
        runner = OnnxRuntimeRunner(session(model), path, "cpu", manifest)
    engine = RuntimeEngine(runner, path, threads)
    scorer = Scorer(engine)
    k = scorer.default_iw_samples
    count = min(len(train.images), MAX_IMAGES, max(1, MAX_ROWS // k))
    labels = train.labels[:count] if scorer.takes_label and train.labels is not None else None
    if scorer.takes_label and labels is None:
        raise UserError(f"{spec} has no labels to score the conditional {manifest.role} graph")
    bpd = scorer.bits_per_dim(train.images[:count], iw_samples=k, seed=SEED, labels=labels)
    finite = bpd[np.isfinite(bpd)]
    if len(finite) < 2:
        raise UserError(
            f"the {manifest.family} {manifest.role} graph gives {len(bpd) - len(finite)} "
            f"non-finite scores on {len(bpd)} training images; the model diverged"
        )
    return TrainingScores(
        data=spec,
        split="train",
        images=len(finite),
        iw_samples=k,
        seed=SEED,
        bpd_mean=float(finite.mean()),
        bpd_std=float(finite.std(ddof=1)),
    )
