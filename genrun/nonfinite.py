"""What a sample or a score holding NaN or inf becomes: one policy, named
once, for `genrun sample` (Sampler.batches) and `genrun likelihood` (the
score rows).

- "error": count them all, then refuse (exit 2, nothing written);
- "drop": leave them out (counted, and said);
- "keep": write them (counted; a sample's pixels then mean nothing, a score
  is written to the CSV but left out of the mean).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import UserError

NONFINITE = ("error", "drop", "keep")


def check_policy(policy: str) -> str:
    """`policy` if it is one of NONFINITE, else a one-line UserError."""
    if policy not in NONFINITE:
        raise UserError(
            f"unknown --nonfinite {policy!r}; nonfinite must be one of: {', '.join(NONFINITE)}"
        )
    return policy


def nonfinite_rows(values: np.ndarray | None, rows: int) -> np.ndarray:
    """Per row of a batch: True where any value is NaN or inf (all False
    when there is nothing to check: no float output)."""
    if values is None or not np.issubdtype(values.dtype, np.floating):
        return np.zeros(rows, bool)
    return ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def score_rows(rows: list[tuple], policy: str, score: str) -> tuple[list[tuple], int]:
    """CSV rows (labels..., value) under `policy`: (the rows to write, how
    many were not finite). "error" refuses naming the first."""
    bad = [row for row in rows if not math.isfinite(row[-1])]
    if bad and policy == "error":
        raise UserError(
            f"{len(bad)} of {len(rows)} {score} scores are not finite (first: "
            f"{' '.join(map(str, bad[0][:-1]))} = {bad[0][-1]}); the model overflows on "
            "them: pass --nonfinite drop to leave them out, or keep to write them to the CSV"
        )
    if policy == "drop":
        rows = [row for row in rows if math.isfinite(row[-1])]
    return rows, len(bad)


def score_note(count: int, policy: str) -> str:
    """What happened to `count` non-finite scores, for the summary line."""
    verb = "dropped" if policy == "drop" else "kept in the CSV, left out of the mean"
    return f"{count} non-finite {verb}"
