"""MNIST's IDX files, gzipped or raw, read as a stream whose memory is
bounded by what the file really holds, and the four files of an MNIST folder."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from genrun.errors import UserError

from .imagesets import ImageSet, image_set

MNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST IDX file, gzipped or raw: images (magic 2051) give
    (N, H, W) uint8, labels (magic 2049) give (N,) uint8. Anything truncated,
    corrupt or foreign is a UserError naming the file.

    The file is read as a stream: the header first, then exactly the bytes its
    dims call for (plus one, to catch trailing data), so a gzip bomb or a
    header claiming exabytes costs no more memory than the header justifies
    and the file really holds."""
    path = Path(path)
    fix = "download it again"
    with _open_maybe_gzip(path) as stream:
        magic = _read_stream(stream, 4, path)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[3] not in (1, 3):
            raise UserError(f"{path} is not an MNIST IDX file (bad magic number); {fix}")
        if magic[2] != 0x08:
            raise UserError(
                f"{path} holds IDX type code 0x{magic[2]:02x}, only unsigned bytes (0x08) "
                f"are supported; use the original MNIST files"
            )
        ndim = magic[3]
        dims_bytes = _read_stream(stream, 4 * ndim, path)
        if len(dims_bytes) < 4 * ndim:
            raise UserError(f"{path} is truncated inside its IDX header; {fix}")
        dims = struct.unpack(f">{ndim}I", dims_bytes)
        expected = math.prod(dims)  # Python ints: 2**31 x 2**31 x 4 does not overflow
        if not stream.compressed:
            # A raw file's size is known: refuse a lying header before reading.
            actual = os.fstat(stream.fileno()).st_size - 4 - 4 * ndim
            if actual != expected:
                raise UserError(
                    f"{path} header says shape {dims} ({expected} bytes) but holds {actual} "
                    f"bytes; {fix}"
                )
        data = _read_stream(stream, expected + 1, path)
    if len(data) != expected:
        held = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        raise UserError(
            f"{path} header says shape {dims} ({expected} bytes) but holds {held} bytes; {fix}"
        )
    # A bytearray is writable, so the array needs no copy.
    return np.frombuffer(data, np.uint8).reshape(dims)


class _IdxStream:
    """A binary file, decompressed on the fly when it starts with the gzip
    magic (the suffix is not trusted: people gunzip files and keep the name)."""

    def __init__(self, path: Path):
        try:
            self.file = open(path, "rb")  # noqa: SIM115 (closed in __exit__)
        except OSError as err:
            raise UserError(f"cannot read {path} ({err.strerror}); check the path") from err
        self.compressed = self.file.read(2) == b"\x1f\x8b"
        self.file.seek(0)
        self.stream = gzip.GzipFile(fileobj=self.file) if self.compressed else self.file

    def fileno(self) -> int:
        return self.file.fileno()

    def __enter__(self) -> _IdxStream:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def _open_maybe_gzip(path: Path) -> _IdxStream:
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an IDX file; pass the file itself")
    return _IdxStream(path)


_READ_CHUNK = 1 << 24  # 16 MiB: memory grows with what the file really holds


def _read_stream(stream: _IdxStream, count: int, path: Path) -> bytearray:
    """Up to `count` bytes (fewer at the end of the data), read in chunks so
    that a huge `count` allocates only what arrives."""
    data = bytearray()
    try:
        while len(data) < count:
            chunk = stream.stream.read(min(_READ_CHUNK, count - len(data)))
            if not chunk:
                break
            data += chunk
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{path} is a truncated or corrupt gzip file ({err}); download it again"
        ) from err
    return data


def _find_mnist_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    names = ", ".join(f"{s}[.gz]" for s in MNIST_STEMS.values())
    raise UserError(f"{directory} has no {stem}[.gz]; an MNIST folder must contain {names}")


def read_mnist_dir(directory: Path) -> tuple[ImageSet, ImageSet]:
    if not directory.is_dir():
        names = ", ".join(f"{s}.gz" for s in MNIST_STEMS.values())
        raise UserError(f"MNIST folder {directory} does not exist; it must contain {names}")
    arrays = {}
    for key, stem in MNIST_STEMS.items():
        path = _find_mnist_file(directory, stem)
        arrays[key] = read_idx(path)
        want_ndim = 3 if key.endswith("images") else 1
        if arrays[key].ndim != want_ndim:
            raise UserError(f"{path} holds the wrong kind of IDX data; expected {stem}")
    return (
        _mnist_set(arrays["train_images"], arrays["train_labels"], directory, "train"),
        _mnist_set(arrays["test_images"], arrays["test_labels"], directory, "t10k"),
    )


def _mnist_set(images: np.ndarray, labels: np.ndarray, directory: Path, prefix: str) -> ImageSet:
    if len(images) != len(labels):
        raise UserError(
            f"{directory}: {prefix} images ({len(images)}) and labels ({len(labels)}) "
            f"differ in count; use matching files from the same release"
        )
    return image_set(images[:, None], labels)
