"""Test metrics over a whole split: per-image values from the model's
`evaluate`, reduced to means with their standard errors."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import chunks
from .models import GenerativeModel


@torch.no_grad()
def evaluate_images(
    model: GenerativeModel,
    images: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    iw_samples: int = 1,
) -> dict[str, dict[str, float]]:
    """{metric: {"mean": m, "stderr": s}} over `images` (uint8 N,C,H,W)."""
    model.eval().to(device)
    per_image: dict[str, list[torch.Tensor]] = {}
    for x in chunks(images, batch_size):
        for key, values in model.evaluate(x.to(device), iw_samples).items():
            per_image.setdefault(key, []).append(values.double().cpu())
    summary = {}
    for key, parts in per_image.items():
        values = torch.cat(parts)
        stderr = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else 0.0
        summary[key] = {"mean": values.mean().item(), "stderr": stderr}
    return summary
