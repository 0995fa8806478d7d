"""The short Adam loop the model tests train with, and the check they make."""

from __future__ import annotations

import numpy as np
import torch

from genrun.readers import DataSplit, ImageSet
from gentrain.models import GenerativeModel


def first_and_last_losses(
    model: GenerativeModel, images: np.ndarray, metric: str | None = None, steps: int = 60
) -> tuple[float, float]:
    """Adam (1e-3) on seeded batches of 64; the mean loss (or `metric`) of the
    first and of the last 5 steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    images = torch.as_tensor(images)
    losses = []
    for _ in range(steps):
        batch = images[torch.randint(0, len(images), (64,), generator=generator)]
        objective = model.objective(batch)
        optimizer.zero_grad()
        objective.loss.backward()
        optimizer.step()
        losses.append(objective.metrics[metric] if metric else objective.loss.item())
    return sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def first_images(data: DataSplit, train: int, test: int) -> DataSplit:
    """The first `train` training and `test` test images (and labels) of `data`."""
    return DataSplit(
        train=ImageSet(data.train.images[:train], data.train.labels[:train]),
        test=ImageSet(data.test.images[:test], data.test.labels[:test]),
        spec=data.spec,
    )
