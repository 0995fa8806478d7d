"""Data readers: every spec loads the right arrays, splits are deterministic,
and every broken input is a one-line UserError. Never touches the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import MNIST_DIR
from PIL import Image

from genrun import atomic
from genrun.errors import UserError
from genrun.readers import DATA_SPECS_HELP, DataSplit, download, load_data, read_idx

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fake_mnist(directory: Path, n_train: int = 6, n_test: int = 4) -> None:
    """A tiny raw MNIST folder: image k is filled with the value k."""
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 5, 7), np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        labels = np.arange(n, dtype=np.uint8) % 10
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))


def _assert_one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- MNIST


def test_mnist_subset_loads(mnist: DataSplit) -> None:
    assert mnist.train.images.shape == (500, 1, 28, 28)
    assert mnist.test.images.shape == (100, 1, 28, 28)
    assert mnist.shape == (1, 28, 28)
    assert mnist.spec == f"mnist:{MNIST_DIR}"
    for part in (mnist.train, mnist.test):
        assert part.images.dtype == np.uint8 and part.images.flags.c_contiguous
        assert part.labels.dtype == np.int64 and part.labels.shape == (len(part.images),)
        assert set(np.unique(part.labels)) == set(range(10))
        assert part.images.min() == 0 and part.images.max() == 255


def test_mnist_subset_is_the_one_its_readme_describes() -> None:
    """The shipped files are byte for byte those whose sha256 the README lists."""
    readme = (MNIST_DIR / "README.md").read_text()
    listed = dict(re.findall(r"^\| (\S+\.gz) \| .* \| ([0-9a-f]{64}) \|$", readme, re.M))
    assert sorted(listed) == sorted(f"{stem}.gz" for stem in STEMS)
    for name, sha in listed.items():
        assert hashlib.sha256((MNIST_DIR / name).read_bytes()).hexdigest() == sha, name


def test_raw_idx_files_match_gzipped(mnist: DataSplit, tmp_path: Path) -> None:
    for stem in STEMS:
        (tmp_path / stem).write_bytes(gzip.decompress((MNIST_DIR / f"{stem}.gz").read_bytes()))
    raw = load_data(f"mnist:{tmp_path}")
    for got, want in ((raw.train, mnist.train), (raw.test, mnist.test)):
        np.testing.assert_array_equal(got.images, want.images)
        np.testing.assert_array_equal(got.labels, want.labels)


def test_read_idx_shapes() -> None:
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (100, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (100,) and labels.dtype == np.uint8
    images[0, 0, 0] = 1  # writable, not a view on an immutable buffer


def test_truncated_gzip_is_a_user_error(tmp_path: Path) -> None:
    whole = (MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="truncated or corrupt gzip") as err:
        read_idx(path)
    assert str(path) in _assert_one_line(err)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x89PNG\r\n\x1a\n" + bytes(100),  # a foreign file
        b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 2) + bytes(4),  # 2-D: not MNIST
        b"\x01\x00\x08\x03" + struct.pack(">3I", 1, 2, 2) + bytes(4),
    ],
)
def test_bad_magic_is_a_user_error(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "images"
    path.write_bytes(payload)
    with pytest.raises(UserError, match="not an MNIST IDX file") as err:
        read_idx(path)
    assert str(path) in _assert_one_line(err)


def test_non_byte_idx_type_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "floats"
    path.write_bytes(_idx_bytes(np.zeros((2, 3, 3)), type_code=0x0D))
    with pytest.raises(UserError, match="0x0d"):
        read_idx(path)


@pytest.mark.parametrize("cut", [1, 17, 4 * 28 * 28 + 1])
def test_payload_length_must_match_header(tmp_path: Path, cut: int) -> None:
    data = _idx_bytes(np.zeros((5, 28, 28), np.uint8))
    path = tmp_path / "short"
    path.write_bytes(data[:-cut])
    with pytest.raises(UserError, match=r"truncated|header says") as err:
        read_idx(path)
    assert str(path) in _assert_one_line(err)


def test_payload_longer_than_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_bytes(_idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(UserError, match=r"header says shape \(4,\) \(4 bytes\) but holds 5"):
        read_idx(path)


def test_missing_mnist_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist") as err:
        load_data(f"mnist:{tmp_path / 'nope'}")
    message = _assert_one_line(err)
    assert all(f"{stem}.gz" in message for stem in STEMS)


def test_missing_mnist_file(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match=r"has no t10k-labels-idx1-ubyte\[\.gz\]") as err:
        load_data(f"mnist:{tmp_path}")
    assert "must contain train-images-idx3-ubyte[.gz]" in _assert_one_line(err)


def test_fake_mnist_folder_loads_raw_files(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path)
    data = load_data(f"mnist:{tmp_path}")
    assert data.shape == (1, 5, 7)
    assert [img.max() for img in data.train.images] == list(range(6))
    np.testing.assert_array_equal(data.test.labels, [0, 1, 2, 3])


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(UserError, match=r"train images \(6\) and labels \(5\)"):
        load_data(f"mnist:{tmp_path}")


def test_labels_in_place_of_images(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path)
    shutil.copy(tmp_path / "t10k-labels-idx1-ubyte", tmp_path / "t10k-images-idx3-ubyte")
    with pytest.raises(UserError, match="wrong kind of IDX data"):
        load_data(f"mnist:{tmp_path}")


def test_mnist_resized_for_glow(mnist: DataSplit) -> None:
    resized = load_data(f"mnist:{MNIST_DIR}", size=32)
    assert resized.shape == (1, 32, 32)
    assert resized.train.images.shape == (500, 1, 32, 32) and resized.train.images.dtype == np.uint8
    np.testing.assert_array_equal(resized.train.labels, mnist.train.labels)
    # Bilinear resizing keeps the digit where it was: the means barely move.
    assert abs(resized.test.images.mean() - mnist.test.images.mean()) < 2


# ----------------------------------------------------------------------------- download / cache


def _cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("VAEFLOW_CACHE", str(tmp_path))
    return tmp_path / "mnist"


def test_offline_mnist_is_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = _cache(monkeypatch, tmp_path)
    tried = []

    def offline(url: str, timeout: float) -> None:
        tried.append(url)
        raise urllib.error.URLError("Temporary failure\nin name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError) as err:
        load_data("mnist")
    assert _assert_one_line(err) == (
        "could not download MNIST (Temporary failure in name resolution); "
        "download the four files yourself and use --data mnist:DIR"
    )
    assert [url.rsplit("/", 1)[0] + "/" for url in tried] == list(download.MIRRORS)
    assert list(cache.iterdir()) == []  # no partial downloads left behind


def test_sha256_mismatch_removes_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = _cache(monkeypatch, tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"<html>"))
    with pytest.raises(UserError, match=r"wrong sha256.*removed") as err:
        load_data("mnist")
    _assert_one_line(err)
    assert list(cache.iterdir()) == []


def test_download_falls_back_to_second_mirror(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mnist: DataSplit
) -> None:
    """Serve the repository's subset as if it were the release (its own sha256s
    stand in for the official ones) with the first mirror down."""
    cache = _cache(monkeypatch, tmp_path)
    shas = {s: hashlib.sha256((MNIST_DIR / f"{s}.gz").read_bytes()).hexdigest() for s in STEMS}
    monkeypatch.setattr(download, "SHA256", shas)

    def second_mirror_only(url: str, timeout: float) -> io.BytesIO:
        if url.startswith(download.MIRRORS[0]):
            raise TimeoutError("timed out")
        return io.BytesIO((MNIST_DIR / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", second_mirror_only)
    data = load_data("mnist")
    np.testing.assert_array_equal(data.test.images, mnist.test.images)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in STEMS)


def test_download_writes_through_the_atomic_writer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """While a file downloads, the only thing in the cache is a temporary of
    genrun.atomic's naming (a dead writer's is swept first); whole and
    checked, it is renamed into place."""
    cache = _cache(monkeypatch, tmp_path)
    cache.mkdir()
    stale = cache / f".{STEMS[0]}.gz.999999999.{'0' * 32}.tmp"  # its writer was killed
    stale.write_bytes(b"half a file")
    payload, seen = b"mnist", []

    class Response(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            seen.append(sorted(p.name for p in cache.iterdir()))
            return super().read(size)

    shas = {stem: hashlib.sha256(payload).hexdigest() for stem in STEMS}
    monkeypatch.setattr(download, "SHA256", shas)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(payload))
    download.fetch_mnist(cache)
    assert len(seen[0]) == 1 and atomic._TEMP_NAME.match(seen[0][0]), seen[0]
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    assert all((cache / f"{s}.gz").read_bytes() == payload for s in STEMS)


def test_cached_mnist_needs_no_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mnist: DataSplit
) -> None:
    cache = _cache(monkeypatch, tmp_path)
    cache.mkdir()
    for stem in STEMS:
        (cache / f"{stem}.gz").symlink_to(MNIST_DIR / f"{stem}.gz")

    def no_network(url: str, timeout: float) -> None:
        raise AssertionError("a cached MNIST must not be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    np.testing.assert_array_equal(load_data("mnist").train.labels, mnist.train.labels)


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_deterministic() -> None:
    data = load_data("digits")
    assert data.shape == (1, 8, 8)
    assert len(data.train.images) == 1617 and len(data.test.images) == 180
    assert data.train.images.dtype == np.uint8 and data.train.images.max() == 255
    assert set(np.unique(data.train.labels)) == set(range(10))
    # round(v * 255 / 16) for v in 0..16 is the only possible pixel value
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(np.unique(data.train.images)) <= allowed
    again, other = load_data("digits"), load_data("digits", seed=1)
    np.testing.assert_array_equal(again.test.images, data.test.images)
    assert not np.array_equal(other.test.images, data.test.images)
    assert len(load_data("digits", test_fraction=0.25).test.images) == 449


def test_digits_resized() -> None:
    data = load_data("digits", size=16)
    assert data.shape == (1, 16, 16) and data.test.images.flags.c_contiguous


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"size": 0}, "image size"), ({"test_fraction": 1.0}, "test fraction")],
)
def test_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        load_data("digits", **kwargs)


@pytest.mark.parametrize("spec", ["xyz", "mnist:", "folder:", "npz:", "digits:extra", "MNIST"])
def test_unknown_spec(spec: str) -> None:
    with pytest.raises(UserError) as err:
        load_data(spec)
    assert str(err.value) == f"unknown data spec {spec!r}; use one of: {DATA_SPECS_HELP}"
    assert DATA_SPECS_HELP == "digits, mnist, mnist:DIR, folder:DIR, npz:FILE"


# ----------------------------------------------------------------------------- npz


def _nchw(n: int, c: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, c, 6, 5), dtype=np.uint8)


LAYOUTS = {
    "NHW": (1, lambda x: x[:, 0]),
    "NHW1": (1, lambda x: x.transpose(0, 2, 3, 1)),
    "NHW3": (3, lambda x: x.transpose(0, 2, 3, 1)),
    "N1HW": (1, lambda x: x),
    "N3HW": (3, lambda x: x),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_npz_with_its_own_split(tmp_path: Path, layout: str) -> None:
    channels, to_layout = LAYOUTS[layout]
    x_train, x_test = _nchw(8, channels), _nchw(3, channels, seed=1)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=to_layout(x_train), x_test=to_layout(x_test), y_train=np.arange(8))
    with pytest.raises(UserError, match="labels for only one split"):
        load_data(f"npz:{path}")
    np.savez(path, x_train=to_layout(x_train), x_test=to_layout(x_test))
    data = load_data(f"npz:{path}")
    assert data.shape == (channels, 6, 5) and data.train.labels is None
    np.testing.assert_array_equal(data.train.images, x_train)
    np.testing.assert_array_equal(data.test.images, x_test)
    assert data.train.images.flags.c_contiguous


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("image_key", "label_key"), [("images", "labels"), ("x", "y"), ("", "")])
def test_npz_split_deterministically(
    tmp_path: Path, layout: str, image_key: str, label_key: str
) -> None:
    channels, to_layout = LAYOUTS[layout]
    x, y = _nchw(20, channels), np.arange(20) % 7
    path = tmp_path / "data.npz"
    if image_key:
        np.savez(path, **{image_key: to_layout(x), label_key: y})
    else:
        np.savez(path, to_layout(x))  # a single unnamed array: no labels
    data = load_data(f"npz:{path}", test_fraction=0.25, seed=3)
    assert len(data.train.images) == 15 and len(data.test.images) == 5
    merged = np.concatenate([data.train.images, data.test.images])
    assert sorted(map(bytes, merged)) == sorted(map(bytes, x))  # a partition, no copies
    if image_key:
        index = [next(i for i in range(20) if np.array_equal(x[i], img)) for img in merged]
        np.testing.assert_array_equal(
            np.concatenate([data.train.labels, data.test.labels]), y[index]
        )
    else:
        assert data.train.labels is None
    again = load_data(f"npz:{path}", test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.test.images, data.test.images)


def test_npy_file_is_the_image_array(tmp_path: Path) -> None:
    path = tmp_path / "data.npy"
    np.save(path, _nchw(10, 3))
    assert load_data(f"npz:{path}").shape == (3, 6, 5)


def test_npz_float_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, images=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(UserError) as err:
        load_data(f"npz:{path}")
    assert _assert_one_line(err).endswith(
        "npz images must be uint8 0..255, got float32; "
        "convert with (x*255).round().astype(np.uint8)"
    )


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"images": np.zeros((4, 8, 8, 2), np.uint8)}, r"images have shape \(4, 8, 8, 2\)"),
        ({"images": np.zeros((4, 8), np.uint8)}, "images have shape"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros((4, 10))}, "labels must"),
        ({"images": np.zeros((4, 8, 8), np.uint8), "labels": np.zeros(3, int)}, "labels must"),
        ({"a": np.zeros((4, 8, 8), np.uint8), "b": np.zeros(4)}, r"has arrays \['a', 'b'\]"),
        ({"images": np.array([None, 1], dtype=object)}, "cannot read"),
    ],
)
def test_npz_bad_contents(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=match) as err:
        load_data(f"npz:{path}")
    _assert_one_line(err)


def test_npz_missing_or_not_npz(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_data(f"npz:{tmp_path / 'nope.npz'}")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match=r"cannot read .*junk\.npz as \.npz"):
        load_data(f"npz:{junk}")


# ----------------------------------------------------------------------------- folders


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def test_folder_grey_with_class_subfolders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 3), ("dog", 2), ("ant", 4)):
        for i in range(n):
            _save(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (30, 40), dtype=np.uint8))
    # deeper files count for their first-level folder, as torchvision's ImageFolder does
    _save(tmp_path / "ant" / "more" / "x.png", np.zeros((16, 16), np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_data(f"folder:{tmp_path}", size=16, test_fraction=0.3)
    assert data.shape == (1, 16, 16)
    assert len(data.train.images) + len(data.test.images) == 10 and len(data.test.images) == 3
    labels = np.concatenate([data.train.labels, data.test.labels])
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 3 + [2] * 2  # ant, cat, dog
    assert load_data(f"folder:{tmp_path}").shape == (1, 64, 64)  # the default size


def test_folder_mixed_grey_and_rgb_is_rgb(tmp_path: Path) -> None:
    grey = np.full((20, 20), 77, np.uint8)
    _save(tmp_path / "a.png", grey)
    _save(tmp_path / "b.JPG", np.full((20, 20, 3), (255, 0, 0), np.uint8))
    _save(tmp_path / "c.png", grey, mode="LA")
    _save(tmp_path / "deep" / "d.jpeg", np.full((20, 20, 3), 9, np.uint8))
    data = load_data(f"folder:{tmp_path}", size=20, test_fraction=0.5)
    assert data.shape == (3, 20, 20) and data.train.labels is None  # a.png sits at the top
    images = np.concatenate([data.train.images, data.test.images])
    assert len(images) == 4
    assert any((img == 77).all() for img in images)  # grey replicated to 3 channels
    red = [img for img in images if img[0].mean() > 200]
    assert len(red) == 1 and red[0][1:].max() < 20  # JPEG is lossy, but red stays red


def test_folder_crops_the_centre(tmp_path: Path) -> None:
    wide = np.zeros((20, 60), np.uint8)
    wide[:, 20:40] = 200  # exactly the centre square of a 60 x 20 image
    tall = np.zeros((90, 30), np.uint8)
    tall[30:60] = 150
    _save(tmp_path / "wide.png", wide)
    _save(tmp_path / "tall.png", tall)
    data = load_data(f"folder:{tmp_path}", size=20, test_fraction=0.5)
    cropped_tall, cropped_wide = sorted(
        (data.train.images[0, 0], data.test.images[0, 0]), key=lambda img: img.mean()
    )
    assert (cropped_wide == 200).all()
    # tall is first downscaled 30 -> 20 wide; LANCZOS rings a little at the crop edges
    assert (cropped_tall[2:-2] == 150).all() and np.abs(cropped_tall - 150.0).max() < 10


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_data(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match=r"holds no \.png/\.jpg/\.jpeg images"):
        load_data(f"folder:{tmp_path}")
    _save(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match="at least 2 images"):
        load_data(f"folder:{tmp_path}")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=r"cannot read image .*bad\.png") as err:
        load_data(f"folder:{tmp_path}")
    _assert_one_line(err)
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(bad)
    with pytest.raises(UserError, match="16-bit or float"):
        load_data(f"folder:{tmp_path}")


# ----------------------------------------------------------------------------- torch-free


def test_readers_do_not_import_torch() -> None:
    code = (
        "import sys, genrun.readers, genrun.images; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'sklearn' not in sys.modules, 'sklearn imported eagerly'"
    )
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bits_is_the_depth_that_keeps_every_grey_level_apart():
    digits = load_data("digits")
    assert digits.bits == 5
    levels = np.unique(digits.train.images) >> (8 - digits.bits)
    assert len(np.unique(levels)) == len(np.unique(digits.train.images)) == 17
    assert load_data("digits", size=16).bits == 8  # interpolation makes new levels
    assert load_data("digits", size=8).bits == 5  # native size: nothing resized
