"""Class labels for conditional models and engines, as users give them: a
class's name or index (`--label 3`, `--label cat`), every class (`--label
all`), or one label per image from a file (`--label-from FILE`).

A name wins over an index: with classes named "1" and "7", `--label 1` is the
class named "1" (index 0). Without names, classes are their indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError

ALL = "all"
MAX_LABEL_FILE = 64 * 2**20  # bytes of a --label-from text file read at most


def class_names(names: Sequence[str] | None, count: int) -> list[str]:
    """Every class's name: its own where the data named it, else its index."""
    return list(names) if names else [str(i) for i in range(count)]


def class_index(text: str, names: Sequence[str] | None, count: int) -> int:
    """The class `text` names: a class name, else an index 0..count-1."""
    text = str(text).strip()
    if names and text in names:
        return list(names).index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < count:
        return int(text)
    shown = ", ".join(class_names(names, count)[:12]) + (", ..." if count > 12 else "")
    how = f"a name or an index 0..{count - 1}" if names else "an index"
    raise UserError(f"unknown class {text!r}; this model's {count} classes are {shown} ({how})")


def parse_label(text: str, names: Sequence[str] | None, count: int) -> list[int]:
    """`--label`: one class, or every class in order for 'all'."""
    if str(text).strip().lower() == ALL and not (names and ALL in names):
        return list(range(count))
    return [class_index(text, names, count)]


def read_labels(path: Path, n: int, names: Sequence[str] | None, count: int) -> np.ndarray:
    """`--label-from FILE`: one label per image, int64 (n,). A .npy file of
    integers, or a text file with one class (name or index) per line, or a
    CSV whose last column holds them (a header line is skipped when its last
    field is no class, so `genrun classify`'s output reads back)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"label file {path} does not exist; check the path")
    if path.suffix == ".npy":
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path} as .npy ({type(err).__name__})") from None
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"{path} must hold integer labels of shape (N,), got {labels.dtype}")
        values = [str(int(v)) for v in labels]
    else:
        if path.stat().st_size > MAX_LABEL_FILE:
            raise UserError(f"{path} is over {MAX_LABEL_FILE >> 20} MiB; pass a .npy file")
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
        values = [line.rsplit(",", 1)[-1].strip() for line in lines if line]
        if values and not _is_class(values[0], names, count):
            values = values[1:]  # a header
    if len(values) != n:
        raise UserError(f"{path} holds {len(values)} labels for {n} images; give one per image")
    return np.array([class_index(v, names, count) for v in values], np.int64)


def _is_class(text: str, names: Sequence[str] | None, count: int) -> bool:
    try:
        class_index(text, names, count)
    except UserError:
        return False
    return True
