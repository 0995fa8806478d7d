"""`load_data(spec)`: the data spec string -> the reader of its format -> a
DataSplit (train and test ImageSets of uint8 NCHW images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genrun.errors import UserError

from .download import cache_dir, fetch_mnist
from .idx import read_mnist_dir
from .image_files import DEFAULT_FOLDER_SIZE, channel_mode, read_folder
from .imagesets import TEST_FRACTION, DataSplit, split
from .npz import read_npz
from .resize import resized

DATA_SPECS_HELP = "digits, mnist, mnist:DIR, folder:DIR, npz:FILE"

# The digits' 17 grey levels, spread over 0..255, fall in 17 distinct 5-bit bins
# (4 bits would merge two); at 8 bits a flow must squeeze 17 levels into spikes
# among 256 bins, which it overfits wildly (test bits/dim in the thousands).
_DIGITS_BITS = 5
# scikit-learn's load_digits data, shipped so the torch-free runtime can score it.
_DIGITS_FILE = Path(__file__).parents[1] / "data" / "digits.npz"


def load_data(
    spec: str,
    size: int | None = None,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
    channels: int | None = None,
) -> DataSplit:
    """Load the data set named by `spec` (one of DATA_SPECS_HELP).

    `size` resizes to size x size (folders default to 64, others keep their
    native size); `test_fraction` and `seed` fix the split of sources that have
    no official one, so the same arguments always give the same split.
    `channels` (1 or 3) converts a folder's images to grey or RGB the way
    `read_image_files` does (by default grey stays grey and one colour image
    makes the whole folder RGB).
    """
    _check_options(size, test_fraction)
    kind, _, arg = spec.partition(":")
    bits, names = 8, None
    if spec == "digits":
        train, test = split(*_read_digits(), test_fraction, seed)
        bits = _DIGITS_BITS
    elif spec == "mnist":
        train, test = read_mnist_dir(fetch_mnist(cache_dir()))
    elif kind == "mnist" and arg:
        train, test = read_mnist_dir(Path(arg).expanduser())
    elif folder_of(spec) is not None:
        images, labels, names = read_folder(
            folder_of(spec), size or DEFAULT_FOLDER_SIZE, channel_mode(channels)
        )
        train, test = split(images, labels, test_fraction, seed)
    elif kind == "npz" and arg:
        train, test, names = read_npz(Path(arg).expanduser(), test_fraction, seed)
    else:
        raise UserError(f"unknown data spec {spec!r}; use one of: {DATA_SPECS_HELP}")
    if size is not None and (size, size) != train.images.shape[2:]:
        train, test = resized(train, size), resized(test, size)
        bits = 8  # interpolation makes new grey levels
    return DataSplit(train=train, test=test, spec=spec, bits=bits, class_names=names)


def folder_of(spec: str) -> Path | None:
    """The folder of a "folder:DIR" spec, else None."""
    kind, _, arg = spec.partition(":")
    return Path(arg).expanduser() if kind == "folder" and arg else None


def _check_options(size: int | None, test_fraction: float) -> None:
    if size is not None and size < 1:
        raise UserError(f"image size must be a positive number of pixels, got {size}")
    if not 0 < test_fraction < 1:
        raise UserError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 digits shipped in genrun/data (values 0..16; source, licence and
    citation in genrun/data/DIGITS.md), rescaled to 0..255."""
    with np.load(_DIGITS_FILE) as digits:
        images, labels = digits["images"], digits["labels"].astype(np.int64)
    images = np.round(images * (255 / 16)).astype(np.uint8)
    return images[:, None], labels
