"""Image grids for samples and reconstructions, and the streamed npz writer;
torch-free (numpy + pillow). Files are written through genrun.atomic."""

from __future__ import annotations

import io
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from genrun.atomic import AtomicFile, write_atomic
from genrun.errors import UserError

__all__ = ["make_grid", "save_grid", "write_npz_stream"]


def make_grid(
    images: np.ndarray, nrow: int | None = None, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
    """Tile uint8 (N, C, H, W) images into one picture, `nrow` images per row
    (default ceil(sqrt(N)), as torchvision counts it), with `padding` pixels of
    `pad_value` around every tile. Returns (H', W') for grey, (H', W', 3) for RGB."""
    _check_images(images)
    n, c, h, w = images.shape
    if nrow is not None and nrow < 1:
        raise UserError(f"nrow must be at least 1, got {nrow}")
    if padding < 0 or not 0 <= pad_value <= 255:
        raise UserError(f"padding must be >= 0 and pad_value 0..255, got {padding}, {pad_value}")
    cols = min(nrow or math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    step_h, step_w = h + padding, w + padding
    grid = np.full((padding + rows * step_h, padding + cols * step_w, c), pad_value, np.uint8)
    for i, image in enumerate(images):
        top, left = padding + (i // cols) * step_h, padding + (i % cols) * step_w
        grid[top : top + h, left : left + w] = image.transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def save_grid(
    images: np.ndarray,
    path: str | Path,
    nrow: int | None = None,
    padding: int = 2,
    scale: int = 1,
) -> Path:
    """Write `make_grid(images, nrow, padding)` as a PNG, each pixel blown up
    to scale x scale (nearest neighbour, so 8x8 digits stay crisp). The file
    appears atomically: a crash never leaves a half-written PNG at `path`."""
    if not isinstance(scale, int) or scale < 1:
        raise UserError(f"scale must be a whole number >= 1, got {scale!r}")
    grid = make_grid(images, nrow=nrow, padding=padding)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
    return path


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = getattr(images, "dtype", type(images).__name__)
        raise UserError(f"images must be a uint8 numpy array, got {kind}; convert to uint8 first")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or 0 in images.shape:
        raise UserError(
            f"images must have shape (N, C, H, W) with N >= 1 and C = 1 or 3, "
            f"got {images.shape}; add the channel axis"
        )


def write_npz_stream(
    path: Path, name: str, batches: Iterable[np.ndarray], shape: tuple[int, ...], dtype=np.uint8
) -> None:
    """Write an npz holding one array `name` of `shape` whose rows arrive in
    `batches`, holding one batch in memory at a time: the .npy member's header
    (the shape is known up front) goes first, then each batch's bytes. Under a
    temporary name until every row is written, so an error or Ctrl-C leaves nothing."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    # Stored, not deflated, like np.savez; zip64 because the size is unknown
    # to zipfile and may pass 4 GiB. zipfile also writes to a pipe (no seeks).
    with AtomicFile(path) as out:
        with (
            zipfile.ZipFile(out.file, "w", zipfile.ZIP_STORED) as archive,
            archive.open(f"{name}.npy", "w", force_zip64=True) as member,
        ):
            np.lib.format.write_array_header_1_0(member, header)
            rows = 0
            for batch in batches:
                if batch.dtype != dtype or batch.shape[1:] != tuple(shape[1:]):
                    raise UserError(
                        f"cannot write {path}: a batch of {batch.dtype} {batch.shape} does "
                        f"not fit the array's {dtype} {tuple(shape)}"
                    )
                rows += len(batch)
                if rows > shape[0]:
                    break
                member.write(memoryview(np.ascontiguousarray(batch)).cast("B"))
        if rows != shape[0]:
            raise UserError(f"cannot write {path}: got {rows} rows for an array of {shape[0]}")
