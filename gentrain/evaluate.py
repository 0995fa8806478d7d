"""Test metrics over a whole split: per-image values from the model's
`evaluate`, reduced to means with their standard errors."""

from __future__ import annotations

import math

import numpy as np
import torch

from genrun.errors import UserError
from genrun.readers import ImageSet

from .data import labelled_chunks
from .models import GenerativeModel


@torch.no_grad()
def evaluate_images(
    model: GenerativeModel,
    images: np.ndarray | ImageSet,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    iw_samples: int = 1,
) -> dict[str, dict[str, float]]:
    """{metric: {"mean": m, "stderr": s}} over `images` (uint8 N,C,H,W, or an
    ImageSet: a conditional model is evaluated at the set's labels)."""
    model.eval().to(device)
    if not isinstance(images, ImageSet):
        images = ImageSet(images, None)
    if model.num_classes and (
        images.labels is None or images.labels.min() < 0 or images.labels.max() >= model.num_classes
    ):
        raise UserError(
            f"a conditional model of {model.num_classes} classes is evaluated on images labelled "
            f"0..{model.num_classes - 1}; pass --data with the labelled data it was trained on"
        )
    per_image: dict[str, list[torch.Tensor]] = {}
    for x, label in labelled_chunks(images, batch_size, labelled=model.num_classes > 0):
        labelled = {} if label is None else {"label": label.to(device)}
        for key, values in model.evaluate(x.to(device), iw_samples, **labelled).items():
            per_image.setdefault(key, []).append(values.double().cpu())
    summary = {}
    for key, parts in per_image.items():
        values = torch.cat(parts)
        bad = int((~torch.isfinite(values)).sum())
        if bad:  # a mean of them would print as nan or inf: refuse, never report it
            raise UserError(
                f"{key} is not finite for {bad} of {len(values)} images: the model's weights "
                "hold NaN or inf, or it overflows on these images; evaluate an earlier "
                "checkpoint or retrain"
            )
        stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0
        summary[key] = {"mean": values.mean().item(), "stderr": stderr}
    return summary
