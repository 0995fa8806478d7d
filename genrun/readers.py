"""Torch-free image data readers: one `load_data(spec)` for every source.

Training and serving both read through here so that an image means the same
uint8 NCHW array everywhere. Only numpy, pillow and the standard library are
imported at module level; the digits ship inside the package (genrun/data), so
no source needs scikit-learn.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import struct
import urllib.error
import urllib.request
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genrun.errors import UserError

DATA_SPECS_HELP = "digits, mnist, mnist:DIR, folder:DIR, npz:FILE"

_IDX_LABELS, _IDX_IMAGES = 2049, 2051
_MNIST_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# sha256 of the official gzipped (.gz) release files, identical on every mirror.
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_DOWNLOAD_TIMEOUT_S = 60
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_GREY_MODES = {"1", "L", "LA"}
# Converting these to 8 bits in PIL clips instead of rescaling: refuse them.
_WIDE_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_DEFAULT_FOLDER_SIZE = 64
# The digits' 17 grey levels, spread over 0..255, fall in 17 distinct 5-bit bins
# (4 bits would merge two); at 8 bits a flow must squeeze 17 levels into spikes
# among 256 bins, which it overfits wildly (test bits/dim in the thousands).
_DIGITS_BITS = 5
# scikit-learn's load_digits data, shipped so the torch-free runtime can score it.
_DIGITS_FILE = Path(__file__).parent / "data" / "digits.npz"


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) with C in {1, 3}; labels int64 (N,) or None."""

    images: np.ndarray
    labels: np.ndarray | None


@dataclass
class DataSplit:
    """A train/test pair and the spec string it was loaded from."""

    train: ImageSet
    test: ImageSet
    spec: str
    # The fewest bits per pixel that keep every grey level of the source
    # apart: what a flow should model by default (its `n_bits`).
    bits: int = 8

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image, train and test alike."""
        _, c, h, w = self.train.images.shape
        return (c, h, w)


def load_data(
    spec: str, size: int | None = None, test_fraction: float = 0.1, seed: int = 0
) -> DataSplit:
    """Load the data set named by `spec` (one of DATA_SPECS_HELP).

    `size` resizes to size x size (folders default to 64, others keep their
    native size); `test_fraction` and `seed` fix the split of sources that have
    no official one, so the same arguments always give the same split.
    """
    _check_options(size, test_fraction)
    kind, _, arg = spec.partition(":")
    bits = 8
    if spec == "digits":
        train, test = _split(*_read_digits(), test_fraction, seed)
        bits = _DIGITS_BITS
    elif spec == "mnist":
        train, test = _read_mnist_dir(_fetch_mnist(_cache_dir()))
    elif kind == "mnist" and arg:
        train, test = _read_mnist_dir(Path(arg).expanduser())
    elif kind == "folder" and arg:
        images, labels = _read_folder(Path(arg).expanduser(), size or _DEFAULT_FOLDER_SIZE)
        train, test = _split(images, labels, test_fraction, seed)
    elif kind == "npz" and arg:
        train, test = _read_npz(Path(arg).expanduser(), test_fraction, seed)
    else:
        raise UserError(f"unknown data spec {spec!r}; use one of: {DATA_SPECS_HELP}")
    if size is not None and (size, size) != train.images.shape[2:]:
        train, test = _resized(train, size), _resized(test, size)
        bits = 8  # interpolation makes new grey levels
    return DataSplit(train=train, test=test, spec=spec, bits=bits)


def _check_options(size: int | None, test_fraction: float) -> None:
    if size is not None and size < 1:
        raise UserError(f"image size must be a positive number of pixels, got {size}")
    if not 0 < test_fraction < 1:
        raise UserError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")


def _image_set(images: np.ndarray, labels: np.ndarray | None) -> ImageSet:
    """The one place arrays become an ImageSet, so dtype and layout are uniform."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return ImageSet(images=images, labels=labels)


def _split(
    images: np.ndarray, labels: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet]:
    """Deterministic train/test split: a seeded permutation picks the test
    indices; both halves keep the source order so folders stay browsable."""
    n = len(images)
    if n < 2:
        raise UserError(f"need at least 2 images to make a train/test split, found {n}")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])

    def take(idx: np.ndarray) -> ImageSet:
        return _image_set(images[idx], None if labels is None else labels[idx])

    return take(train_idx), take(test_idx)


# ----------------------------------------------------------------------------- digits


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits shipped in genrun/data (values 0..16; source, licence and
    citation in genrun/data/DIGITS.md), rescaled to 0..255."""
    with np.load(_DIGITS_FILE) as digits:
        images, labels = digits["images"], digits["labels"].astype(np.int64)
    images = np.round(images * (255 / 16)).astype(np.uint8)
    return images[:, None], labels


# ----------------------------------------------------------------------------- IDX / MNIST


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST IDX file, gzipped or raw: images (magic 2051) give
    (N, H, W) uint8, labels (magic 2049) give (N,) uint8. Anything truncated,
    corrupt or foreign is a UserError naming the file."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    fix = "download it again"
    if len(data) < 4 or data[:2] != b"\0\0" or data[3] not in (1, 3):
        raise UserError(f"{path} is not an MNIST IDX file (bad magic number); {fix}")
    if data[2] != 0x08:
        raise UserError(
            f"{path} holds IDX type code 0x{data[2]:02x}, only unsigned bytes (0x08) "
            f"are supported; use the original MNIST files"
        )
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f"{path} is truncated inside its IDX header; {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected, actual = int(np.prod(dims)), len(data) - header
    if actual != expected:
        raise UserError(
            f"{path} header says shape {dims} ({expected} bytes) but holds {actual} bytes; {fix}"
        )
    # Copy so the array is writable and does not pin the decompressed buffer.
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _read_maybe_gzip(path: Path) -> bytes:
    """File contents, decompressed when they start with the gzip magic (the
    suffix is not trusted: people gunzip files and keep the name)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path} ({err.strerror}); check the path") from err
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{path} is a truncated or corrupt gzip file ({err}); download it again"
        ) from err


def _find_mnist_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    names = ", ".join(f"{s}[.gz]" for s in _MNIST_STEMS.values())
    raise UserError(f"{directory} has no {stem}[.gz]; an MNIST folder must contain {names}")


def _read_mnist_dir(directory: Path) -> tuple[ImageSet, ImageSet]:
    if not directory.is_dir():
        names = ", ".join(f"{s}.gz" for s in _MNIST_STEMS.values())
        raise UserError(f"MNIST folder {directory} does not exist; it must contain {names}")
    arrays = {}
    for key, stem in _MNIST_STEMS.items():
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
    return _image_set(images[:, None], labels)


def _cache_dir() -> Path:
    root = os.environ.get("VAEFLOW_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vaeflow") / "mnist"


def _fetch_mnist(directory: Path) -> Path:
    """Make sure the four MNIST files are in `directory`, downloading the
    missing ones (gzipped or raw copies already there are used as they are)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the cache folder {directory} ({err.strerror}); "
            f"set VAEFLOW_CACHE to a writable folder"
        ) from err
    for stem in _MNIST_STEMS.values():
        if not (directory / f"{stem}.gz").is_file() and not (directory / stem).is_file():
            _download_mnist_file(stem, directory)
    return directory


def _download_mnist_file(stem: str, directory: Path) -> None:
    """Try each mirror in turn; only a network failure moves on to the next,
    a checksum mismatch stops (a mirror serving other bytes is suspicious)."""
    reason = "no mirror tried"
    for mirror in _MNIST_MIRRORS:
        try:
            name = f"{stem}.gz"
            _download_verified(mirror + name, directory / name, _MNIST_SHA256[stem])
            return
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts included
            reason = str(getattr(err, "reason", err) or type(err).__name__)
    reason = " ".join(reason.split())  # the message must stay on one line
    raise UserError(
        f"could not download MNIST ({reason}); "
        f"download the four files yourself and use --data mnist:DIR"
    )


def _download_verified(url: str, target: Path, sha256: str) -> None:
    """Stream `url` into a temp file beside `target`, check its sha256, then
    rename: an interrupted or bad download never leaves a file at `target`."""
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")  # umask mode, not 0600
    try:
        digest = hashlib.sha256()
        with (
            open(tmp, "xb") as out,
            urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
        ):
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise UserError(
                f"{url} gave a file with the wrong sha256 ({digest.hexdigest()[:16]}...), "
                f"so it was removed; try again later or download it yourself and use "
                f"--data mnist:DIR"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- folders


def _read_folder(directory: Path, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Every PNG/JPEG under `directory`, fitted to size x size. Labels come
    from the first-level subfolder (ImageFolder style) when no image sits
    directly in `directory`."""
    if not directory.is_dir():
        raise UserError(f"image folder {directory} does not exist; check the path")
    files = sorted(
        (p for p in directory.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(directory).as_posix(),
    )
    if not files:
        raise UserError(f"{directory} holds no .png/.jpg/.jpeg images; add some or fix the path")
    pictures = [_load_picture(path, size) for path in files]
    if any(p.ndim == 3 for p in pictures):  # one colour image makes the whole set RGB
        pictures = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in pictures]
    stacked = np.stack(pictures)
    images = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)
    return images, _folder_labels(directory, files)


def _load_picture(path: Path, size: int) -> np.ndarray:
    """One image as (size, size) grey or (size, size, 3) RGB uint8."""
    return np.asarray(_fit_square(_open_picture(path), size))


def _open_picture(path: Path, mode: str | None = None) -> Image.Image:
    """An 8-bit image upright, converted to `mode` ("L" or "RGB"; by default
    grey stays grey and everything else becomes RGB)."""
    try:
        with Image.open(path) as img:
            if img.mode in _WIDE_MODES:
                raise UserError(
                    f"{path} has {img.mode} pixels (16-bit or float); save it as 8-bit PNG/JPEG"
                )
            img = ImageOps.exif_transpose(img)  # phone JPEGs store rotation in EXIF
            return img.convert(mode or ("L" if img.mode in _GREY_MODES else "RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot read image {path} ({err}); fix or remove the file") from err


def read_image_files(paths: list[Path], shape: tuple[int, int, int]) -> np.ndarray:
    """Image files (PNG/JPEG) as uint8 (N, C, H, W) of exactly `shape`
    (C, H, W): converted to grey for C = 1, RGB for C = 3, never resized (a
    score of a resized image is not the image's score)."""
    channels, height, width = shape
    if channels not in (1, 3):
        raise UserError(f"images of shape {shape} have {channels} channels; use 1 or 3")
    pictures = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"image file {path} does not exist; check the path")
        picture = _open_picture(path, "L" if channels == 1 else "RGB")
        if picture.size != (width, height):
            raise UserError(
                f"{path} is {picture.size[0]}x{picture.size[1]} pixels, expected {width}x"
                f"{height} (images of shape {tuple(shape)}, C x H x W); resize it, or score "
                "a folder with --data folder:DIR, which resizes"
            )
        pictures.append(np.asarray(picture))
    stacked = np.stack(pictures)
    return stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)


def _fit_square(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size`, then centre-crop to size x size
    (keeps the aspect ratio instead of squashing)."""
    width, height = img.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != img.size:
        img = img.resize(new_size, Image.Resampling.LANCZOS)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def _folder_labels(directory: Path, files: list[Path]) -> np.ndarray | None:
    parts = [path.relative_to(directory).parts for path in files]
    if any(len(p) == 1 for p in parts):
        return None
    classes = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[p[0]] for p in parts], dtype=np.int64)


# ----------------------------------------------------------------------------- npz


def _read_npz(path: Path, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """x_train/x_test (+ y_train/y_test) keep their split; a single image
    array (`images`, `x`, or the only array) is split deterministically."""
    arrays = _npz_arrays(path)
    if "x_train" in arrays and "x_test" in arrays:
        if ("y_train" in arrays) != ("y_test" in arrays):
            raise UserError(f"{path} has labels for only one split; save both y_train and y_test")
        return (
            _npz_set(path, arrays["x_train"], arrays.get("y_train")),
            _npz_set(path, arrays["x_test"], arrays.get("y_test")),
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
    return _split(whole.images, whole.labels, test_fraction, seed)


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"npz file {path} does not exist; check the path")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):  # a .npy file: its one array is the images
            return {"images": loaded}
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        # ValueError also covers object arrays, refused because unpickling runs code.
        raise UserError(
            f"cannot read {path} as .npz ({type(err).__name__}); "
            f"write it with np.savez(path, images=x, labels=y)"
        ) from err


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
    return _image_set(images, labels)


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


# ----------------------------------------------------------------------------- resizing


def _resized(images: ImageSet, size: int) -> ImageSet:
    """Bilinear resize to size x size, a no-op at the native size."""
    n, c, h, w = images.images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, c, size, size), np.uint8)
    for i, chw in enumerate(images.images):
        pil = Image.fromarray(chw[0] if c == 1 else chw.transpose(1, 2, 0))
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = resized[None] if c == 1 else resized.transpose(2, 0, 1)
    return ImageSet(images=out, labels=images.labels)
