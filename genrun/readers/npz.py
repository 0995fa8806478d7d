"""Arrays in .npz (or .npy) files: never unpickled, every header checked
against the bytes behind it before numpy allocates what it claims."""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from genrun.errors import UserError

from .imagesets import ImageSet, image_set, split


def read_npz(
    path: Path, test_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet, tuple[str, ...] | None]:
    """(train, test, class names or None). x_train/x_test (+ y_train/y_test)
    keep their split; a single image array (`images`, `x`, or the only array)
    is split deterministically. An optional string array `class_names` names
    the labels' classes by index."""
    arrays = _npz_arrays(path)
    names = _class_names(path, arrays.pop("class_names", None))
    if "x_train" in arrays and "x_test" in arrays:
        if ("y_train" in arrays) != ("y_test" in arrays):
            raise UserError(f"{path} has labels for only one split; save both y_train and y_test")
        return (
            _npz_set(path, arrays["x_train"], arrays.get("y_train")),
            _npz_set(path, arrays["x_test"], arrays.get("y_test")),
            names,
        )
    key = next((k for k in ("images", "x") if k in arrays), None)
    if key is None and len(arrays) == 1:
        key = next(iter(arrays))
    if key is None:
        raise UserError(
            f"{path} has arrays {sorted(arrays)}; save x_train/x_test (+ y_train/y_test) "
            f"or images (+ labels)"
        )
    labels = arrays.get("labels", arrays.get("y"))
    whole = _npz_set(path, arrays[key], labels)
    return *split(whole.images, whole.labels, test_fraction, seed), names


def _class_names(path: Path, names: np.ndarray | None) -> tuple[str, ...] | None:
    """The `class_names` array as names: unique non-empty strings, one per class."""
    if names is None:
        return None
    if names.ndim != 1 or names.dtype.kind != "U" or not len(names):
        raise UserError(
            f"{path}: class_names must be a 1-D array of strings, got {names.dtype} "
            f"{names.shape}; save np.array(['cat', 'dog', ...])"
        )
    values = tuple(str(name) for name in names)
    if len(set(values)) != len(values) or not all(values):
        raise UserError(f"{path}: class_names must be unique and non-empty; rename the classes")
    return values


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an .npz file; pass the file itself")
    if not path.is_file():
        raise UserError(f"npz file {path} does not exist; check the path")
    fix = "write it with np.savez(path, images=x, labels=y)"
    try:
        _check_npy_headers(path)
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy file: its one array is the images
            return {"images": loaded}
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError) as err:
        # ValueError also covers object arrays, refused because unpickling runs code.
        raise UserError(f"cannot read {path} as .npz ({type(err).__name__}); {fix}") from None
    except _BadNpy as err:
        raise UserError(f"cannot read {path} as .npz: {err}; {fix}") from None


class _BadNpy(Exception):
    """An .npy header that the data behind it cannot back."""


def _check_npy_headers(path: Path) -> None:
    """Every .npy header (of the file, or of each npz member) against the
    bytes really stored behind it, before numpy allocates what the header
    claims: (10**9, 28, 28) over a few bytes is refused, not a MemoryError."""
    with open(path, "rb") as file:
        if file.read(6) == b"\x93NUMPY":
            file.seek(0)
            _check_npy_header(file, os.fstat(file.fileno()).st_size, path.name)
            return
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                with archive.open(info) as member:
                    _check_npy_header(member, info.file_size, info.filename)


def _check_npy_header(stream, stored: int, name: str) -> None:
    version = np.lib.format.read_magic(stream)
    read_header = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }.get(version)
    if read_header is None:
        raise _BadNpy(f"{name} has .npy format version {version}, not 1.0 or 2.0")
    shape, _, dtype = read_header(stream, max_header_size=10_000)
    if dtype.hasobject:
        raise _BadNpy(f"{name} holds Python objects (pickles), which are never loaded")
    claimed = math.prod(shape) * dtype.itemsize
    behind = stored - stream.tell()
    if claimed != behind:
        raise _BadNpy(
            f"{name} claims shape {shape} of {dtype} ({claimed:,} bytes) but holds {behind:,}"
        )


def _npz_set(path: Path, images: np.ndarray, labels: np.ndarray | None) -> ImageSet:
    if images.dtype != np.uint8:
        raise UserError(
            f"{path}: npz images must be uint8 0..255, got {images.dtype}; "
            f"convert with (x*255).round().astype(np.uint8)"
        )
    images = _to_nchw(path, images)
    if labels is not None and (
        labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise UserError(
            f"{path}: labels must be integers of shape ({len(images)},), got {labels.dtype} "
            f"{labels.shape}; save class indices, not one-hot vectors"
        )
    return image_set(images, labels)


def _to_nchw(path: Path, images: np.ndarray) -> np.ndarray:
    """Accept (N,H,W), (N,C,H,W) and channels-last (N,H,W,C), C in {1, 3};
    channels-first wins when both readings fit (only for 1- or 3-pixel images)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    raise UserError(
        f"{path}: images have shape {images.shape}; use (N,H,W), (N,H,W,C) or (N,C,H,W) "
        f"with C = 1 or 3"
    )
