"""PNG/JPEG image files and folders of them, as uint8 arrays: one conversion
for both (8-bit, EXIF rotation applied, grey or RGB), sizes checked from the
header before anything is decoded."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from genrun.errors import UserError

from .resize import fit_square

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_GREY_MODES = {"1", "L", "LA"}
# Converting these to 8 bits in PIL clips instead of rescaling: refuse them.
_WIDE_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
DEFAULT_FOLDER_SIZE = 64


def read_folder(
    directory: Path, size: int, mode: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """Every PNG/JPEG under `directory` (`folder_files`), fitted to size x
    size, converted to `mode` ("L", "RGB" or None: see `_open_picture`), with
    labels and class names: labels come from the first-level subfolder
    (ImageFolder style, classes in sorted order of their names) when no image
    sits directly in `directory`."""
    files = folder_files(directory)
    return _read_pictures(files, size, mode), *_folder_labels(directory, files)


def read_named_folder(
    directory: Path, size: int, channels: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Every image under `directory` as `read_folder` reads it, in file
    order, and each one's path relative to `directory`: what scoring a
    folder reports, row by row."""
    files = folder_files(directory)
    names = [path.relative_to(directory).as_posix() for path in files]
    return names, _read_pictures(files, size, channel_mode(channels))


def folder_files(directory: Path) -> list[Path]:
    """Every PNG/JPEG file under `directory`, sorted by the path relative to it."""
    if not directory.is_dir():
        raise UserError(f"image folder {directory} does not exist; check the path")
    files = sorted(
        (p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(directory).as_posix(),
    )
    if not files:
        raise UserError(f"{directory} holds no .png/.jpg/.jpeg images; add some or fix the path")
    return files


def _read_pictures(files: list[Path], size: int, mode: str | None) -> np.ndarray:
    """uint8 (N, C, size, size); one colour image makes the whole set RGB."""
    pictures = [_load_picture(path, size, mode) for path in files]
    if any(p.ndim == 3 for p in pictures):
        pictures = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=2) for p in pictures]
    stacked = np.stack(pictures)
    return stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)


def _load_picture(path: Path, size: int, mode: str | None = None) -> np.ndarray:
    """One image as (size, size) grey or (size, size, 3) RGB uint8."""
    return np.asarray(fit_square(_open_picture(path, mode), size))


def channel_mode(channels: int | None) -> str | None:
    if channels is None:
        return None
    if channels not in (1, 3):
        raise UserError(f"images with {channels} channels are not supported; use 1 or 3")
    return "L" if channels == 1 else "RGB"


# Decoding costs about 4 bytes a pixel; no image worth training on or scoring
# here comes near this (a 48-megapixel phone photo does), while a 480 KB PNG
# can claim 13000 x 13000. Checked from the header, before any decoding.
MAX_IMAGE_PIXELS = 64_000_000


def _open_picture(
    path: Path, mode: str | None = None, size: tuple[int, int] | None = None
) -> Image.Image:
    """An 8-bit image upright, converted to `mode` ("L" or "RGB"; by default
    grey stays grey and everything else becomes RGB; alpha is dropped). The
    one conversion for image files and folders alike. `size` (width, height),
    if given, is checked from the header before anything is decoded."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, not an image file; pass PNG/JPEG files")
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 megapixels (and raises from twice that); the
            # stricter MAX_IMAGE_PIXELS below is checked before any decoding.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size  # from the header: nothing decoded yet
                if size is not None and _upright_size(img) != size:
                    shown = "x".join(map(str, _upright_size(img)))
                    raise _WrongSize(shown)
                if width * height > MAX_IMAGE_PIXELS:
                    raise UserError(
                        f"{path} claims {width}x{height} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS:,} read here; shrink it first"
                    )
                if img.mode in _WIDE_MODES:
                    raise UserError(
                        f"{path} has {img.mode} pixels (16-bit or float); save it as 8-bit PNG/JPEG"
                    )
                img = ImageOps.exif_transpose(img)  # phone JPEGs store rotation in EXIF
                return img.convert(mode or ("L" if img.mode in _GREY_MODES else "RGB"))
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        MemoryError,
        Image.DecompressionBombError,
    ) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(f"cannot read image {path} ({reason}); fix or remove the file") from None


class _WrongSize(Exception):
    """An image file whose header size is not the one asked for."""


def _upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF rotation `_open_picture` applies."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a corrupt EXIF block: exif_transpose will ignore it too
        orientation = 1
    width, height = img.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def read_image_files(paths: list[Path], shape: tuple[int, int, int]) -> np.ndarray:
    """Image files (PNG/JPEG) as uint8 (N, C, H, W) of exactly `shape`
    (C, H, W): converted to grey for C = 1, RGB for C = 3, never resized (a
    score of a resized image is not the image's score)."""
    channels, height, width = shape
    if channels not in (1, 3):
        raise UserError(f"images of shape {shape} have {channels} channels; use 1 or 3")
    pictures = []
    for path in paths:
        if not path.exists():
            raise UserError(f"image file {path} does not exist; check the path")
        if not path.is_dir() and not path.is_file():
            raise UserError(f"{path} is not a regular file; pass PNG/JPEG image files")
        try:
            picture = _open_picture(path, channel_mode(channels), size=(width, height))
        except _WrongSize as err:
            raise UserError(
                f"{path} is {err} pixels, expected {width}x{height} (images of shape "
                f"{tuple(shape)}, C x H x W); resize it, or score a folder with "
                "--data folder:DIR, which resizes"
            ) from None
        pictures.append(np.asarray(picture))
    stacked = np.stack(pictures)
    return stacked[:, None] if channels == 1 else stacked.transpose(0, 3, 1, 2)


def _folder_labels(
    directory: Path, files: list[Path]
) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """(label of each file, class names by label) from the first-level
    sub-folders; (None, None) when an image sits directly in `directory`."""
    parts = [path.relative_to(directory).parts for path in files]
    if any(len(p) == 1 for p in parts):
        return None, None
    classes = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[p[0]] for p in parts], dtype=np.int64), tuple(classes)
