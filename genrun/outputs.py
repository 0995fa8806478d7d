"""Where `genrun sample` and `genrun likelihood` write: a PNG grid, an npz
(streamed, also into a pipe such as /dev/stdout), a folder of PNGs, a CSV.
Each is checked before any work is done (the kind from the suffix, the
folder writable) and written through genrun.atomic: all of it or nothing,
an OS error a one-line UserError."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .atomic import atomic_folder, is_stream, target_folder, write_atomic
from .errors import UserError
from .images import save_grid, write_npz_stream
from .manifest import IMAGES

if TYPE_CHECKING:
    from .sampler import Progress, SampleBatches

# A grid is built in memory and one PNG; beyond this many tiles it is neither
# viewable nor small, so larger runs go to an .npz or a folder (both stream).
MAX_GRID = 10_000
# What an npz holds beside its rows (zip and .npy headers, zip64 records), at most.
NPZ_OVERHEAD = 4096


def sample_kind(out: Path) -> str:
    """'png' (a grid), 'npz' or 'dir' (one PNG each); DIR.parquet is Ray's
    (genrun.ray_cluster writes its shards)."""
    if out.suffix.lower() in (".png", ".npz"):
        return out.suffix.lower()[1:]
    if is_stream(out):
        return "npz"  # a pipe or device (/dev/stdout): the array, streamed
    if out.suffix:
        raise UserError(
            f"--out {out}: use a .png grid, an .npz file, a folder or (with --ray) DIR.parquet"
        )
    return "dir"


def write_samples(out: Path, batches: SampleBatches, progress: Progress = None) -> SampleOutput:
    """Check `out` for the samples (`SampleOutput`), then draw and write them:
    the batches are lazy, so a bad --out costs no sampling."""
    output = SampleOutput(out, batches)
    output.write(batches, progress)
    return output


class SampleOutput:
    """Where `genrun sample` writes the samples of `batches`, checked when
    made, before anything is drawn: the kind (`sample_kind`), a grid small
    enough to view, a writable folder, an npz's size."""

    def __init__(self, out: Path, batches: SampleBatches):
        n = batches.n
        self.out, self.n, self.row_shape = out, n, batches.shape
        # Non-finite samples are dropped, so an npz learns its row count only at the end.
        self.counted_at_end = batches.policy == "drop"
        rows = len(batches.classes or [None])  # several classes: a grid row each
        self.nrow = n // rows if rows > 1 else None  # None: a square grid
        self.kind = sample_kind(out)
        if self.kind == "png" and n > MAX_GRID:
            raise UserError(
                f"--n {n} is too many for a PNG grid (at most {MAX_GRID}); write an .npz "
                "(--out samples.npz) or one PNG each (--out DIR), both streamed to disk"
            )
        check_writable(out)
        if self.kind == "npz":
            self._check_space()
        self.to_stdout = is_stdout(out)  # the summary then goes to stderr

    def _check_space(self) -> None:
        """An npz's size is known before the first sample: refuse one the
        disk cannot hold (spooled, the rows are on disk twice at the end)."""
        folder = target_folder(self.out)
        if folder is None:
            return  # a pipe or device: its reader decides
        need = self.n * math.prod(self.row_shape) * (2 if self.counted_at_end else 1)
        need += NPZ_OVERHEAD
        free = shutil.disk_usage(folder).free
        if need > free:
            raise UserError(
                f"--n {self.n} samples of shape {self.row_shape} need {_size(need)} for "
                f"{self.out}, {folder} has {_size(free)} free; lower --n, write elsewhere, or "
                "stream them (--out /dev/stdout)"
            )

    def write(self, batches: SampleBatches, progress: Progress = None) -> None:
        """Draw and write the sample batches; a grid with no sample left (all
        dropped) is a UserError saying why."""
        out, kind = self.out, self.kind
        if kind == "png":
            kept = batches.collect(progress)
            if not len(kept):
                raise UserError(f"{batches.summary()}: no sample left to write to {out}")
            writing(out, lambda: save_grid(kept, out, nrow=self.nrow))
            return
        counted = batches.counted(progress)
        if kind == "dir":
            _write_dir(out, counted)
        elif self.counted_at_end:
            writing(out, lambda: _write_npz_spooled(out, counted, self.row_shape))
        else:
            shape = (self.n, *self.row_shape)
            writing(out, lambda: write_npz_stream(out, IMAGES, counted, shape))


def check_writable(out: Path) -> None:
    """Fail before the work, not after: the folder must exist or be creatable."""
    folder = target_folder(out)
    if folder is None:
        return  # a pipe or device is written into where it is, not beside it
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {folder} ({err.strerror}); pick a writable --out") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder} is not writable; pick a writable --out")


def is_stdout(out: Path) -> bool:
    """Whether `out` is this process's stdout: the summary then goes to stderr."""
    try:
        return os.path.samestat(os.stat(out), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def write_csv(out: Path, rows: list[tuple]) -> None:
    """Rows (the header first) as a CSV file, atomically."""
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    writing(out, lambda: write_atomic(out, text.getvalue().encode()))


def writing(out: Path, write: Callable[[], object]) -> None:
    """Call `write()`, turning an OS error into a one-line UserError."""
    try:
        write()
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None


def _write_dir(out: Path, batches: Iterable[np.ndarray]) -> None:
    """One PNG per sample, streamed batch by batch into a hidden folder that is
    renamed to `out` only when complete."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; pick a new --out")
    try:
        with atomic_folder(out) as tmp:
            index = 0
            for batch in batches:
                for image in batch:
                    picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
                    Image.fromarray(picture).save(tmp / f"{index:06d}.png")
                    index += 1
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None


def _write_npz_spooled(out: Path, batches: Iterable[np.ndarray], row_shape: tuple) -> None:
    """An npz of however many rows `batches` yields: the rows go to an
    anonymous temporary file beside `out` first (bounded memory), then into
    the streamed npz, whose header needs the row count."""
    row_bytes = math.prod(row_shape)
    with tempfile.TemporaryFile(dir=out.parent) as spool:
        rows = 0
        for batch in batches:
            spool.write(np.ascontiguousarray(batch).tobytes())
            rows += len(batch)

        def replay():
            spool.seek(0)
            per_read = max(1, (64 << 20) // row_bytes)  # 64 MiB at a time
            for start in range(0, rows, per_read):
                count = min(per_read, rows - start)
                data = spool.read(count * row_bytes)
                yield np.frombuffer(data, np.uint8).reshape(count, *row_shape)

        write_npz_stream(out, IMAGES, replay(), (rows, *row_shape))


def _size(n_bytes: int) -> str:
    """Bytes in the largest unit that keeps a number >= 1: '5.0 TB'."""
    value = float(n_bytes)
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    while value >= 1000 and len(units) > 1:
        value /= 1000
        units.pop(0)
    return f"{value:.1f} {units[0]}"
