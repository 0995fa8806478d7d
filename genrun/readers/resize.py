"""The two resamplers: a folder's images fitted to a square (Lanczos, keeps
the aspect ratio by cropping), and a whole split resized (bilinear)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .imagesets import ImageSet


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size`, then centre-crop to size x size
    (keeps the aspect ratio instead of squashing)."""
    width, height = img.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != img.size:
        img = img.resize(new_size, Image.Resampling.LANCZOS)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return img.crop((left, top, left + size, top + size))


def resized(images: ImageSet, size: int) -> ImageSet:
    """Bilinear resize to size x size, a no-op at the native size."""
    n, c, h, w = images.images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, c, size, size), np.uint8)
    for i, chw in enumerate(images.images):
        pil = Image.fromarray(chw[0] if c == 1 else chw.transpose(1, 2, 0))
        picture = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = picture[None] if c == 1 else picture.transpose(2, 0, 1)
    return ImageSet(images=out, labels=images.labels)
