"""Property tests (hypothesis): every reader, the manifest parser, checkpoints,
engines and the numeric CLI options, fed real files with bytes mutated or
values replaced. The property: a correct result or a one-line UserError, no
other exception, within a deadline and in memory the input justifies.

Deterministic (derandomize) and small (max_examples) so CI stays fast."""

from __future__ import annotations

import gzip
import io
import json
import math
import tracemalloc
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from cli_helpers import InProcessCli
from conftest import MNIST_DIR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_nonfinite import sqrt_generator

from genrun.cli import main
from genrun.engine import load
from genrun.errors import UserError
from genrun.manifest_io import from_json, to_json
from genrun.readers import load_data, read_idx, read_image_files

FUZZ = settings(
    max_examples=40,
    derandomize=True,
    deadline=3000,  # ms per example: a hang fails the property
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLI = InProcessCli(main, "genrun")
MEMORY_LIMIT = 64 << 20  # bytes traced per example; every real input here is < 1 MB


def _mnist(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:n]
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:n]
    return images, labels


def _idx_bytes(array: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


# Mutations of a real file: overwrite a few bytes, cut it, or splice in bytes.
@st.composite
def mutated(draw, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "cut", "insert", "header"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "header" and data:  # headers are where lies hurt: hit the first bytes
            data[at % 32] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        elif kind == "cut":
            data = data[:at]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _one_line_or_result(call):
    """Run `call` under tracemalloc: its result, or None for a one-line UserError."""
    tracemalloc.start()
    try:
        return call()
    except UserError as err:
        assert "\n" not in str(err) and str(err)
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < MEMORY_LIMIT, f"{peak / 2**20:.0f} MiB"


IMAGES, LABELS = _mnist()
IDX_RAW = _idx_bytes(IMAGES)


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_idx_reader(tmp_path_factory, data, compressed) -> None:
    raw = data.draw(mutated(IDX_RAW))
    path = tmp_path_factory.mktemp("idx") / "images"
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compressed else raw)
    array = _one_line_or_result(lambda: read_idx(path))
    if array is not None:
        assert array.dtype == np.uint8 and array.size == len(raw) - 4 - 4 * array.ndim


@FUZZ
@given(data=st.data())
def test_gzip_stream_corruption(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("gz") / "images.gz"
    path.write_bytes(data.draw(mutated(gzip.compress(IDX_RAW))))
    array = _one_line_or_result(lambda: read_idx(path))
    if array is not None:
        assert array.dtype == np.uint8


def _npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(
        buffer, x_train=IMAGES[:12], y_train=LABELS[:12], x_test=IMAGES[12:], y_test=LABELS[12:]
    )
    return buffer.getvalue()


@FUZZ
@given(data=st.data())
def test_npz_reader(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    path.write_bytes(data.draw(mutated(_npz_bytes())))
    split = _one_line_or_result(lambda: load_data(f"npz:{path}"))
    if split is not None:
        assert split.train.images.dtype == np.uint8 and split.train.images.ndim == 4


def _encoded(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(IMAGES[0]).save(buffer, format=kind)
    return buffer.getvalue()


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["PNG", "JPEG"]))
def test_image_files(tmp_path_factory, data, kind) -> None:
    path = tmp_path_factory.mktemp("img") / f"digit.{kind.lower()}"
    path.write_bytes(data.draw(mutated(_encoded(kind))))
    images = _one_line_or_result(lambda: read_image_files([path], (1, 28, 28)))
    if images is not None:
        assert images.shape == (1, 1, 28, 28) and images.dtype == np.uint8


@FUZZ
@given(
    data=st.data(), kind=st.sampled_from(["PNG", "JPEG"]), channels=st.sampled_from([None, 1, 3])
)
def test_image_folders(tmp_path_factory, data, kind, channels) -> None:
    folder = tmp_path_factory.mktemp("folder")
    for i in range(3):
        Image.fromarray(IMAGES[i]).save(folder / f"{i}.png")
    (folder / f"bad.{kind.lower()}").write_bytes(data.draw(mutated(_encoded(kind))))
    split = _one_line_or_result(lambda: load_data(f"folder:{folder}", size=8, channels=channels))
    if split is not None:
        assert split.shape[1:] == (8, 8) and split.shape[0] == (channels or split.shape[0])


# ----------------------------------------------------------------------------- manifests

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["N", "float32", "uint8", "abc"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every path into a parsed JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@pytest.fixture(scope="module")
def engine_file(tmp_path_factory) -> Path:
    return sqrt_generator(tmp_path_factory.mktemp("engine") / "sqrt.generate.onnx")


@FUZZ
@given(data=st.data())
def test_manifest_parser(engine_file, data) -> None:
    """Replace one value anywhere in a real manifest with any JSON value."""
    values = json.loads(to_json(load(engine_file, provider="cpu").manifest))
    paths = [p for p in _paths(values) if p]
    path = data.draw(st.sampled_from(paths))
    target = values
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()) and isinstance(target, dict):
        del target[path[-1]]
    else:
        target[path[-1]] = data.draw(JSON_VALUES)
    manifest = _one_line_or_result(lambda: from_json(json.dumps(values)))
    if manifest is not None:  # what parses is well typed all the way down
        for spec in manifest.inputs + manifest.outputs:
            assert all(s == "N" or (isinstance(s, int) and s >= 1) for s in spec.shape)
        assert all(isinstance(v, int) and v >= 1 for v in manifest.data_shape)


@FUZZ
@given(data=st.data())
def test_engine_files(tmp_path_factory, engine_file, data) -> None:
    path = tmp_path_factory.mktemp("onnx") / "e.onnx"
    path.write_bytes(data.draw(mutated(engine_file.read_bytes())))

    def sample():
        from genrun.sampler import Sampler

        return Sampler(load(path)).sample(8, 0.0, nonfinite="keep")

    images = _one_line_or_result(sample)
    if images is not None:
        assert images.dtype == np.uint8 and len(images) == 8


# ----------------------------------------------------------------------------- CLI options

NUMBERS = st.one_of(
    st.integers(-(2**65), 2**65).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-0", "1e39", "1e-45", "nan", "inf", "", "1,2", "abc", "0x10"]),
)


@FUZZ
@given(
    n=st.one_of(st.integers(-5, 300).map(str), NUMBERS),
    batch=NUMBERS,
    temperature=NUMBERS,
    seed=NUMBERS,
    fixed=st.sampled_from(["0", "1", "2", "-1"]),
    nonfinite=st.sampled_from(["error", "drop", "keep", "bogus"]),
)
def test_sample_options(
    tmp_path_factory, engine_file, n, batch, temperature, seed, fixed, nonfinite
):
    try:
        if abs(float(n)) > 2_000:  # a real request for that many takes that long
            return
    except ValueError:
        pass
    out = tmp_path_factory.mktemp("out") / "s.npz"
    args = ["sample", "--engine", engine_file, "--out", out, "--nonfinite", nonfinite]
    for name, value in [
        ("--n", n),
        ("--batch", batch),
        ("--temperature", temperature),
        ("--seed", seed),
        ("--fixed-levels", fixed),
    ]:
        args += [f"{name}={value}"]
    code, _, err = CLI.run(*args)
    assert code in (0, 2), err
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        # typer's own usage errors are a boxed block; ours one line.
        assert "Traceback" not in err and (len(lines) == 1 or "Usage:" in err), err
    else:
        assert out.is_file()


@FUZZ
@given(batch=NUMBERS, seconds=NUMBERS)
def test_bench_options(engine_file, batch, seconds) -> None:
    try:
        if any(abs(int(size)) > 100_000 for size in batch.split(",")):
            batch = "65536"  # what a larger run costs is the request's (refusal: test_bench_*)
    except ValueError:
        pass
    try:
        if float(seconds) > 0.05:
            seconds = "0.01"  # keep it quick: the budget itself is not under test here
    except ValueError:
        pass
    with mock.patch("genrun.bench.matmul_peak_gflops", return_value=100.0):  # 2 s each: not here
        code, _, err = CLI.run(
            "bench", "--engine", engine_file, f"--batch={batch}", f"--seconds={seconds}"
        )
    assert code in (0, 2) and "Traceback" not in err, err


def test_fuzz_settings_are_deterministic() -> None:
    assert (
        FUZZ.derandomize
        and FUZZ.max_examples <= 50
        and math.isfinite(FUZZ.deadline.total_seconds())
    )
