"""What a sample or a score holding NaN or inf becomes: one policy, named
once, for `genrun sample` (Sampler.batches, which finds the rows) and
`genrun likelihood` (the score rows).

- "error": count them all, then refuse (exit 2, nothing written);
- "drop": leave them out (counted, and said);
- "keep": write them (counted; a sample's pixels then mean nothing, a score
  is written to the CSV but left out of the mean).
"""

from __future__ import annotations

import math
from enum import Enum

from .errors import UserError


class NonFinite(str, Enum):
    """The policy, by name: `NonFinite("drop")` is NonFinite.DROP, and a name
    that is none of them is a one-line UserError (enum's `_missing_`)."""

    ERROR = "error"
    DROP = "drop"
    KEEP = "keep"

    def __str__(self) -> str:  # "drop", not "NonFinite.DROP", in messages (enum.StrEnum is 3.11+)
        return self.value

    __format__ = str.__format__

    @classmethod
    def _missing_(cls, value: object) -> NonFinite:
        choices = ", ".join(policy.value for policy in cls)
        raise UserError(f"unknown --nonfinite {value!r}; nonfinite must be one of: {choices}")


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
