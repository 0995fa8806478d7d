"""Training batches over the numpy `genrun.readers` data.

Datasets here are small enough (MNIST is 6 MB as uint8) to keep whole as one
tensor, so a batch is an index into it: no DataLoader, no worker processes.
The order of each epoch is a pure function of (seed, epoch), which is what
lets a resumed run see exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

from genrun.readers import ImageSet


class EpochBatches:
    """Shuffled fixed-size batches; the last partial batch of an epoch is dropped
    so every step sees the same batch size. With `labels` (a conditional
    model's), `labels(step)` are those of `batch(step)`'s images."""

    def __init__(
        self, images: np.ndarray, batch_size: int, seed: int, labels: np.ndarray | None = None
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels_all = None if labels is None else torch.from_numpy(labels)
        self.batch_size = min(batch_size, len(images))
        self.seed = seed
        self.steps_per_epoch = len(images) // self.batch_size
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)

    def indices(self, step: int) -> torch.Tensor:
        """Which images optimiser step `step` trains on."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.images), generator=generator)
            self._epoch = epoch
        start = index * self.batch_size
        return self._order[start : start + self.batch_size]

    def batch(self, step: int) -> torch.Tensor:
        """The uint8 batch that optimiser step `step` trains on."""
        return self.images[self.indices(step)]

    def labels(self, step: int) -> torch.Tensor | None:
        """The labels of `batch(step)`, or None without labels."""
        return None if self.labels_all is None else self.labels_all[self.indices(step)]


def chunks(images: ImageSet | np.ndarray, batch_size: int):
    """Consecutive uint8 tensor batches over a whole split, for evaluation."""
    array = images.images if isinstance(images, ImageSet) else images
    for start in range(0, len(array), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(array[start : start + batch_size]))


def labelled_chunks(images: ImageSet, batch_size: int, labelled: bool):
    """(images, labels or None) batches over a split: its labels where
    `labelled` (a conditional model's evaluation), else None."""
    for start in range(0, len(images.images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images.images[start : start + batch_size]))
        labels = images.labels[start : start + batch_size] if labelled else None
        yield x, None if labels is None else torch.from_numpy(labels)
