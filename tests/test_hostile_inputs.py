"""Hostile and broken files get one line, never a traceback, and cost no more
memory than their headers justify: IDX gzip bombs and overflowing dims, npz
headers that lie, PNG bombs, folders where files belong, colour modes."""

from __future__ import annotations

import gzip
import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genrun.errors import UserError
from genrun.readers import load_data, read_idx, read_image_files


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def _idx_header(dims: tuple[int, ...]) -> bytes:
    return b"\0\0\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def test_gzip_bomb_is_read_only_as_far_as_the_header_justifies(tmp_path: Path) -> None:
    """A header for 2 x 28 x 28 bytes followed by 200 MB of zeros (200 KB
    gzipped): refused after reading what the header allows, in bounded memory."""
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    zeros = bytes(1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(_idx_header((2, 28, 28)))
        for _ in range(200):
            out.write(zeros)
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(
        UserError,
        match=r"header says shape \(2, 28, 28\) \(1568 bytes\) but "
        r"holds more than 1568",
    ) as err:
        read_idx(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 2 and peak < 1 << 20
    assert str(path) in _one_line(err)


@pytest.mark.parametrize("compressed", [False, True])
def test_idx_dims_overflowing_int64_are_one_line(tmp_path: Path, compressed: bool) -> None:
    data = _idx_header((2**31, 2**31, 4)) + bytes(64)
    path = tmp_path / "idx"
    path.write_bytes(gzip.compress(data) if compressed else data)
    with pytest.raises(UserError, match=r"header says shape \(2147483648, 2147483648, 4\)") as e:
        read_idx(path)
    _one_line(e)


def test_idx_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a folder"):
        read_idx(tmp_path)


def _lying_npy(shape: tuple[int, ...], payload: bytes) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


@pytest.mark.parametrize("deflated", [False, True])
def test_npz_header_claiming_730_gib_is_refused_before_allocating(tmp_path, deflated) -> None:
    path = tmp_path / "lie.npz"
    method = zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("images.npy", _lying_npy((10**9, 28, 28), bytes(28 * 28 * 3)))
    with pytest.raises(UserError, match=r"claims shape \(1000000000, 28, 28\)") as err:
        load_data(f"npz:{path}")
    _one_line(err)
    npy = tmp_path / "lie.npy"
    npy.write_bytes(_lying_npy((10**9, 28, 28), bytes(100)))
    with pytest.raises(UserError, match="claims shape"):
        load_data(f"npz:{npy}")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height grey pixels (a few rows of data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(bytes((width + 1) * 4))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_png_bomb_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(13000, 13000))
    tracemalloc.start()
    with pytest.raises(UserError, match="is 13000x13000 pixels, expected 28x28") as err:
        read_image_files([path], (1, 28, 28))
    _one_line(err)
    with pytest.raises(UserError, match="claims 13000x13000 pixels") as err:
        load_data(f"folder:{tmp_path}", size=28)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20 << 20  # decoding would take 169 MB


def test_folder_passed_as_image_file_says_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a folder, not an image file") as err:
        read_image_files([tmp_path], (1, 28, 28))
    _one_line(err)


def test_folder_converts_colour_modes_like_files(tmp_path: Path) -> None:
    """One RGBA image among grey ones: converted to grey for a grey engine,
    exactly as the same file given alone."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "3.png")
    data = load_data(f"folder:{tmp_path}", size=8, channels=1, test_fraction=0.5)
    assert data.shape == (1, 8, 8)
    every = np.concatenate([data.train.images, data.test.images])
    files = read_image_files(sorted(tmp_path.glob("*.png")), (1, 8, 8))
    assert sorted(map(bytes, every)) == sorted(map(bytes, files))
    assert load_data(f"folder:{tmp_path}", size=8).shape == (3, 8, 8)  # default: colour wins


def test_bench_refuses_a_batch_beyond_memory_and_honours_seconds(tmp_path: Path) -> None:
    from test_nonfinite import sqrt_generator

    from genrun.bench import bench, check_memory
    from genrun.engine import load

    engine = load(sqrt_generator(tmp_path / "g.onnx"))
    with pytest.raises(UserError, match=r"--batch 100000000 would take .* use --batch \d+") as e:
        check_memory(engine, 10**8, available=64 << 20)  # as if 64 MiB were free
    _one_line(e)
    check_memory(engine, 1000, available=1 << 30)  # 1000 rows fit in 1 GiB
    started = time.perf_counter()
    (row,) = bench(engine, [4096], seconds=0.3)
    assert row.calls >= 1 and time.perf_counter() - started < 3
