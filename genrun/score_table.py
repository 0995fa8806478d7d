"""The table `genrun likelihood` prints and writes: one row per image (per
group of M for typicality), labelled by its file or by split and index, the
non-finite scores under the --nonfinite policy, and the one summary line."""

from __future__ import annotations

import math

import numpy as np

from .nonfinite import score_note, score_rows
from .scorer import Scorer, Scores

UNITS = {"nll": " bits/dim", "bpd_density_at_centers": " bits/dim", "complexity": " bits/dim"}


class ScoreTable:
    """Rows (labels..., [images,] score) of one or more scored image sets.
    `labels` names the label columns ("file", or "split", "index"); with
    groups of `m` > 1 each row is labelled by its first image and counts its
    images."""

    def __init__(self, score: str, labels: tuple[str, ...], m: int = 1) -> None:
        self.score, self.m = score, m
        if m > 1:
            labels = (*labels[:-1], f"first_{labels[-1]}", "images")
        self.header = (*labels, score)
        self.rows: list[tuple] = []
        self.results: list[Scores] = []
        self.nonfinite = 0  # non-finite rows seen by `apply`

    def add(self, labels: list[tuple], result: Scores) -> None:
        """The scores of images labelled `labels` (one tuple per image)."""
        starts = range(0, len(labels), self.m)
        if self.m > 1:
            sizes = [min(self.m, len(labels) - i) for i in starts]
            rows = zip([labels[i] for i in starts], sizes, result.values, strict=True)
            self.rows += [(*label, size, float(v)) for label, size, v in rows]
        else:
            rows = zip(labels, result.values, strict=True)
            self.rows += [(*label, float(v)) for label, v in rows]
        self.results.append(result)

    def apply(self, policy: str) -> None:
        """Keep, drop or refuse the non-finite rows (genrun.nonfinite)."""
        self.rows, self.nonfinite = score_rows(self.rows, policy, self.score)
        self.policy = policy

    def csv_rows(self) -> list[tuple]:
        return [self.header, *self.rows]

    def summary(self, what: str, scorer: Scorer) -> str:
        """'WHAT: N images, SCORE mean M +- SE (notes)'."""
        values = np.array([row[-1] for row in self.rows if math.isfinite(row[-1])])
        grouped = self.m > 1
        count = (
            f"{len(self.rows)} groups of {self.m} images" if grouped else f"{len(self.rows)} images"
        )
        mean = "no finite score"
        if len(values):
            stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
            unit = UNITS.get(self.score, "")
            mean = f"{self.score}{unit} mean {values.mean():.4f} +- {stderr:.4f}"
        first = self.results[0]
        notes = [describe_bound(scorer, first)] if first.iw_samples is not None else []
        floored = sum(result.floored for result in self.results)
        if floored:
            notes.append(f"{floored} estimates below 0 raised to 0, as -log P(x) >= 0")
        if self.nonfinite:
            notes.append(score_note(self.nonfinite, self.policy))
        return f"{what}: {count}, {mean}" + (f" ({'; '.join(notes)})" if notes else "")


def describe_bound(scorer: Scorer, result: Scores) -> str:
    """Which bound the scores are, in words."""
    if scorer.exact and not scorer.dequantized:
        return "exact log P(x) of the discrete image"
    if scorer.exact:
        kind = (
            "dequantised variational bound"
            if result.iw_samples == 1
            else f"importance-weighted dequantisation bound, K = {result.iw_samples}"
        )
    else:
        kind = f"IWAE bound, K = {result.iw_samples}"
    return f"bits/dim: {kind}, seed {result.seed}"
