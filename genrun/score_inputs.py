"""What `genrun likelihood` and `genrun classify` score: image files, a
folder's images (each row naming its file) or a data spec's splits, as parts
with their CSV row keys and, where the data has them, their labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .readers import (
    TEST_FRACTION,
    folder_of,
    load_data,
    read_image_files,
    read_named_folder,
    split_indices,
)


@dataclass
class ImagePart:
    """Images scored together: the CSV key columns and each image's keys,
    the images (or, for Ray actors, the files), their labels where the data
    has them, and what they are in words."""

    keys: tuple[str, ...]
    rows: list[tuple]
    images: np.ndarray | list[Path]
    labels: np.ndarray | None
    what: str


def images_to_score(
    files: list[Path] | None,
    data: str | None,
    split: str | None,
    expected: tuple[int, ...],
    paths: bool = False,
) -> list[ImagePart]:
    """What `likelihood` and `classify` score, in the order of the CSV: image
    FILES (read here, or left as `paths` for Ray actors), a folder:DIR (every
    file, or gentrain's split of it), or a data spec's splits."""
    splits = {"test": ["test"], "train": ["train"], "all": ["train", "test"]}
    if split is not None and split not in splits:
        raise UserError(f"unknown --split {split!r}; use test, train or all")
    if files:
        images = files if paths else read_image_files(files, expected)
        return [ImagePart(("file",), [(str(f),) for f in files], images, None, "files")]
    if (folder := folder_of(data)) is not None:  # a user's images: each row names its file
        names, images = read_named_folder(folder, expected[1], expected[0])
        check_shape(data, images.shape[1:], expected)
        if split in ("train", "test"):  # the part gentrain trained or tested on
            chosen = split_indices(len(names), TEST_FRACTION, seed=0)[split == "test"]
            names, images = [names[i] for i in chosen], images[chosen]
        rows = [(name,) for name in names]
        return [ImagePart(("file",), rows, images, None, f"{data} {split or 'all'}")]
    loaded = load_data(data, channels=expected[0])
    check_shape(data, loaded.shape, expected)
    return [
        ImagePart(
            ("split", "index"),
            [(name, i) for i in range(len(getattr(loaded, name).images))],
            getattr(loaded, name).images,
            getattr(loaded, name).labels,
            f"{data} {split or 'test'}",
        )
        for name in splits[split or "test"]
    ]


def check_shape(data: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape) != expected:
        raise UserError(
            f"{data} holds images of shape {tuple(shape)}, the engine expects {expected} "
            "(C, H, W); score data like the model's training data"
        )
