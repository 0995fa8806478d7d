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

from .models import GenerativeModel, build_model

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
    return payload


def model_from_checkpoint(payload: dict[str, Any], family: str | None = None) -> GenerativeModel:
    """Rebuild the model a checkpoint holds, in eval mode. `family` (if given)
    is what the caller expects: another family is a UserError."""
    if family is not None and payload["family"] != family:
        raise UserError(
            f"the checkpoint holds a {payload['family']} model, not a {family}; "
            f"use `gentrain fit {family}` to train one"
        )
    model = build_model(payload["family"], payload["model_config"])
    model.load_state_dict(payload["model"])
    return model.eval()
