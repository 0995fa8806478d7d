"""`genrun classify`'s table: per image its keys, the class the generative
classifier argmax_y P(x|y) p(y) picks and log p(y|x) of every class; the
summary line counts the classes picked and, where the data has labels, says
how often the pick was right."""

from __future__ import annotations

import numpy as np

from .manifest import Manifest


class ClassTable:
    def __init__(self, manifest: Manifest, keys: tuple[str, ...]):
        self.keys = keys
        count = len(manifest.classes)
        self.names = manifest.class_names or [str(i) for i in range(count)]
        self.rows: list[tuple] = []
        self.picked: list[np.ndarray] = []
        self.right: list[np.ndarray] = []  # where the data has labels

    def add(self, keys: list[tuple], log_posterior: np.ndarray, labels: np.ndarray | None) -> None:
        """One part's images: their keys, log p(y|x) (N, K), their labels or None."""
        picked = log_posterior.argmax(axis=1)
        self.picked.append(picked)
        if labels is not None:
            self.right.append(picked == labels)
        for key, pick, row in zip(keys, picked, log_posterior, strict=True):
            self.rows.append((*key, self.names[pick], *(f"{v:.6g}" for v in row)))

    def csv_rows(self) -> list[tuple]:
        header = (*self.keys, "class", *(f"log_p_{name}" for name in self.names))
        return [header, *self.rows]

    def summary(self, what: str) -> str:
        picked = np.concatenate(self.picked)
        counts = np.bincount(picked, minlength=len(self.names))
        shown = ", ".join(f"{name} {c}" for name, c in zip(self.names, counts, strict=True))
        line = f"classified {len(picked)} {what}: {shown}"
        if self.right and sum(len(r) for r in self.right) == len(picked):
            right = np.concatenate(self.right)
            line += f"; accuracy {right.mean():.2%} against the data's labels"
        return line
