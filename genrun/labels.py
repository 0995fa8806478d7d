"""Class labels for conditional models and engines, as users give them: a
class's name or index (`--label 3`, `--label cat`), every class (`--label
all`), or one label per image from a file (`--label-from FILE`).

A name wins over an index: with classes named "1" and "7", `--label 1` is the
class named "1" (index 0). Without names, classes are their indices.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError
from .manifest import LABEL, Manifest

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


# -- the CLI's label options against an engine's manifest ----------------------------------------
def classes_for(manifest: Manifest, label: str | None) -> list[int] | None:
    """`genrun sample --label`: the classes to draw (one, or every one for
    'all'), None for the default; refused for an engine without classes."""
    if not manifest.conditional or LABEL not in {s.name for s in manifest.inputs}:
        if label is not None:
            raise UserError("this engine is not conditional (no classes); drop --label")
        return None
    if label is None:
        return None
    return parse_label(label, manifest.class_names, len(manifest.classes))


def class_words(manifest: Manifest, classes: list[int], n: int) -> str:
    """'of class 7' / 'of class cat (0)' / ', 8 of each of 10 classes' for a
    summary line of samples."""
    if len(classes) > 1:
        return f", {n} of each of {len(classes)} classes"
    names = manifest.class_names
    return f" of class {names[classes[0]]} ({classes[0]})" if names else f" of class {classes[0]}"


def check_label_options(scorer, label_from: str | None, marginal: bool, data: str | None) -> None:
    """`genrun likelihood --label-from / --marginal` against the engine: a
    conditional density engine (label input) needs labels; --marginal needs
    the marginal engine; neither applies to an engine without classes."""
    path, manifest = scorer.engine.path, scorer.engine.manifest
    if label_from is not None and marginal:
        raise UserError("pass --label-from (P(x|y)) or --marginal (P(x)), not both")
    if not manifest.conditional:
        if label_from is not None or marginal:
            raise UserError(f"{path} is not conditional; drop --label-from and --marginal")
        return
    if marginal and scorer.takes_label:
        raise UserError(
            f"{path} scores P(x|y) (it takes labels); score P(x) with the marginal engine "
            "(`genexport onnx --marginal`, NAME.marginal.onnx), or pass --label-from"
        )
    if scorer.takes_label and label_from is None:
        raise UserError(
            f"{path} scores P(x|y): pass --label-from FILE (or 'data' with --data), or score "
            "P(x) with the marginal engine and --marginal"
        )
    if label_from == "data" and data is None:
        raise UserError("--label-from data takes the labels of --data; pass --data SPEC")


def image_labels(manifest: Manifest, label_from: str | None, parts: list) -> list:
    """Each part's labels (int64 arrays, or None without --label-from): the
    data's own ('data'), or a file's, one per image of all parts in order."""
    if label_from is None:
        return [None] * len(parts)
    names, count = manifest.class_names, len(manifest.classes)
    if label_from == "data":
        missing = [p.what for p in parts if p.labels is None]
        if missing:
            raise UserError(f"{missing[0]} has no labels; pass --label-from FILE")
        for part in parts:
            if len(part.labels) and (part.labels.min() < 0 or part.labels.max() >= count):
                raise UserError(f"{part.what} has labels outside this engine's 0..{count - 1}")
        return [p.labels for p in parts]
    total = sum(len(p.rows) for p in parts)
    labels = read_labels(Path(label_from), total, names, count)
    bounds = np.cumsum([0, *(len(p.rows) for p in parts)])
    return [labels[a:b] for a, b in itertools.pairwise(bounds)]
