"""One checkpoint file per run: format version, family, configs, weights,
optimiser, step, RNG state and the last metrics.

Files are written atomically (genrun.atomic: temp file beside it, fsync, rename) so
a crash or Ctrl-C never leaves a half-written checkpoint where a good one was.
Loading goes through `torch.load(weights_only=True)`: a file carrying pickled
code is refused before any of it runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from genrun.atomic import AtomicFile
from genrun.errors import UserError
from genrun.readers import DataSplit, load_data

from .models import GenerativeModel, build_model, model_class

FORMAT = "vaeflow-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (plus format and version) atomically to `path`."""
    path = Path(path)
    with AtomicFile(path) as out:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, out.file)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist; pass the checkpoint.pt that `gentrain fit` wrote"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0][:160]
        raise UserError(
            f"{path} was refused: it holds content that is not plain tensors and data "
            f"({reason}); only load checkpoints written by gentrain"
        ) from None
    except Exception as err:  # any other failure to parse an untrusted file
        raise UserError(
            f"{path} is truncated or not a checkpoint ({type(err).__name__}); "
            "use an intact checkpoint.pt written by gentrain"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(
            f"{path} is not a vaeflow checkpoint; pass a checkpoint.pt written by gentrain"
        )
    if payload.get("version") != VERSION:
        raise UserError(
            f"{path} has checkpoint format version {payload.get('version')}, this gentrain reads "
            f"version {VERSION}; use a matching vaeflow release"
        )
    _check_payload(payload, path)
    return payload


# What the readers of a checkpoint index without looking: required keys, and
# the type of every key that may be present.
_REQUIRED = ("family", "model_config", "model")
_TYPES = {
    "family": str,
    "model_config": dict,
    "model": dict,
    "train_config": dict,
    "data": dict,
    "step": int,
    "metrics": dict,
}


def _check_payload(payload: dict[str, Any], path: Path) -> None:
    fix = "use a checkpoint.pt written by gentrain"
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; {fix}")
    for key, kind in _TYPES.items():
        if key in payload and not isinstance(payload[key], kind):
            raise UserError(
                f"{path}: {key} is a {type(payload[key]).__name__}, not a {kind.__name__}; {fix}"
            )
    data = payload.get("data")
    if data is not None:
        shape = data.get("shape")
        if not isinstance(data.get("spec"), str) or not (
            isinstance(shape, (list, tuple))
            and len(shape) == 3
            and all(isinstance(v, int) and v >= 1 for v in shape)
        ):
            raise UserError(f"{path}: data must hold a spec and a shape [C, H, W]; {fix}")


def evaluation_data(
    payload: dict[str, Any], path: Path, model: GenerativeModel, data: str | None = None
) -> DataSplit:
    """The images to evaluate a checkpoint's model on: `data` if given, else the
    data the run trained on, read as it was trained (size, split seed); images
    of another shape than the model's, or a checkpoint that does not say
    (one made by hand), are one-line errors naming --data."""
    spec = data or (payload.get("data") or {}).get("spec")
    if spec is None:
        raise UserError(f"{path} does not record its training data; pass --data SPEC")
    train_config = payload.get("train_config") or {}
    split = load_data(spec, size=train_config.get("size"), seed=train_config.get("seed", 0))
    shape = tuple(model.config.data_shape)
    if split.shape != shape:
        raise UserError(
            f"{spec} has images of shape {split.shape} but {path} was trained on {shape}; "
            "pass --data with matching images"
        )
    return split


def model_from_checkpoint(payload: dict[str, Any], family: str | None = None) -> GenerativeModel:
    """Rebuild the model a checkpoint holds, in eval mode. `family` (if given)
    is what the caller expects: another family is a UserError.

    A hostile or damaged payload is refused in one line before anything big
    is built: the config is type- and range-checked (ModelConfig.from_dict),
    the model is first built on the "meta" device (no memory) and its tensor
    names and shapes compared with the stored weights, which must be finite."""
    fix = "use a checkpoint.pt written by gentrain"
    stored_family = payload.get("family")
    if not isinstance(stored_family, str):
        raise UserError(f"the checkpoint names no model family (family = {stored_family!r}); {fix}")
    model_class(stored_family)  # an unknown family is a UserError listing the known ones
    if family is not None and stored_family != family:
        raise UserError(
            f"the checkpoint holds a {stored_family} model, not a {family}; "
            f"use `gentrain fit {family}` to train one"
        )
    config, weights = payload.get("model_config"), payload.get("model")
    if not isinstance(config, dict) or not isinstance(weights, dict):
        raise UserError(f"the checkpoint lacks its model config or weights; {fix}")
    with torch.device("meta"):
        skeleton = build_model(stored_family, config)
    weights = dict(weights)
    for name, module in skeleton.named_modules():  # older checkpoints' missing buffers
        if hasattr(module, "upgrade_state_dict"):
            module.upgrade_state_dict(weights, f"{name}." if name else "")
    _check_weights(skeleton.state_dict(), weights, stored_family, fix)
    model = build_model(stored_family, config)
    model.load_state_dict(weights)
    return model.eval()


def _check_weights(expected: dict, weights: dict, family: str, fix: str) -> None:
    """The stored weights are exactly the tensors the config's model has, of
    the same shapes and dtypes, and finite."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UserError(
            f"the checkpoint's weights do not fit its {family} config ({len(missing)} missing, "
            f"e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); {fix}"
        )
    for name, want in expected.items():
        got = weights[name]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
            what = (
                f"{got.dtype} {tuple(got.shape)}"
                if isinstance(got, torch.Tensor)
                else type(got).__name__
            )
            raise UserError(
                f"the checkpoint's weight {name} is {what}, its {family} config needs "
                f"{want.dtype} {tuple(want.shape)}; {fix}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise UserError(
                f"the checkpoint's weight {name} holds NaN or inf (training diverged before it "
                "was saved); resume or evaluate an earlier checkpoint"
            )
