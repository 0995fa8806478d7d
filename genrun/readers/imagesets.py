"""ImageSet and DataSplit, the arrays every reader returns, and the one
seeded train/test split for sources that have no official one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genrun.errors import UserError

# The share of a source without an official split that is held out for test.
TEST_FRACTION = 0.1


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
    # The classes' names by label index where the source names them (a
    # folder's sub-folders, an npz's `class_names`); None for bare indices.
    class_names: tuple[str, ...] | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image, train and test alike."""
        _, c, h, w = self.train.images.shape
        return (c, h, w)

    def class_counts(self) -> tuple[int, ...]:
        """Training images per class, by label index: what a class-conditional
        model is built for (how many classes, and p(y)). A one-line UserError
        where the data has no labels or a class has no training image."""
        if self.train.labels is None or self.test.labels is None:
            raise UserError(
                f"{self.spec} has no class labels, which a conditional model needs; use "
                "mnist:DIR, digits, folder:DIR with one sub-folder per class, or an npz with "
                "labels (or y_train/y_test), or drop --conditional"
            )
        labels = np.concatenate([self.train.labels, self.test.labels])
        if labels.min() < 0:
            raise UserError(f"{self.spec} has negative labels; label the classes 0..K-1")
        count = len(self.class_names) if self.class_names else int(labels.max()) + 1
        if labels.max() >= count:
            raise UserError(
                f"{self.spec} has labels up to {labels.max()} but names only {count} classes; "
                "give every class a name"
            )
        counts = np.bincount(self.train.labels, minlength=count)
        missing = np.flatnonzero(counts == 0)
        if count < 2 or len(missing):
            which = f"class {missing[0]} has" if len(missing) else "fewer than 2 classes have"
            raise UserError(
                f"{self.spec}: {which} no training images; a conditional model needs every "
                "class 0..K-1 (K >= 2) in the training split"
            )
        return tuple(int(c) for c in counts)


def image_set(images: np.ndarray, labels: np.ndarray | None) -> ImageSet:
    """The one place arrays become an ImageSet, so dtype and layout are uniform."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if labels is not None:
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    return ImageSet(images=images, labels=labels)


def split(
    images: np.ndarray, labels: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[ImageSet, ImageSet]:
    """Deterministic train/test split (`split_indices`)."""
    train_idx, test_idx = split_indices(len(images), test_fraction, seed)

    def take(idx: np.ndarray) -> ImageSet:
        return image_set(images[idx], None if labels is None else labels[idx])

    return take(train_idx), take(test_idx)


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of n items: a seeded permutation picks the test
    indices; both halves keep the source order so folders stay browsable."""
    if n < 2:
        raise UserError(f"need at least 2 images to make a train/test split, found {n}")
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_test:]), np.sort(order[:n_test])
