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
    so every step sees the same batch size."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.batch_size = min(batch_size, len(images))
        self.seed = seed
        self.steps_per_epoch = len(images) // self.batch_size
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)

    def batch(self, step: int) -> torch.Tensor:
        """The uint8 batch that optimiser step `step` trains on."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self.images), generator=generator)
            self._epoch = epoch
        start = index * self.batch_size
        return self.images[self._order[start : start + self.batch_size]]


def chunks(images: ImageSet | np.ndarray, batch_size: int):
    """Consecutive uint8 tensor batches over a whole split, for evaluation."""
    array = images.images if isinstance(images, ImageSet) else images
    for start in range(0, len(array), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(array[start : start + batch_size]))
