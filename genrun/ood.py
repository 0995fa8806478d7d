"""Out-of-distribution helpers that need no engine: the lossless compressed
length behind the complexity score, the typicality statistic, and the two
figures that judge a score (AUROC, FPR at 95% TPR).

Convention everywhere: a higher score means "more out-of-distribution".
"""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
from PIL import Image

from .errors import UserError


def compressed_bits(images: np.ndarray, n_bits: int = 8) -> np.ndarray:
    """L(x): the length in bits of each uint8 (N, C, H, W) image as a PNG at
    Pillow's strongest setting (compress_level 9, optimize), whole file with
    headers, float64 (N,). The image is first reduced to the `n_bits` levels
    the density models (Serra et al. 2020 compress what the model scores), so
    L(x) / D and bits/dim count the same symbols."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"compressed length needs uint8 (N, 1|3, H, W) images, got {images.shape}")
    levels = images >> (8 - n_bits)
    bits = np.empty(len(images))
    for i, image in enumerate(levels):
        picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(picture)).save(
            buffer, format="PNG", compress_level=9, optimize=True
        )
        bits[i] = 8 * buffer.tell()
    return bits


def typicality(bits_per_dim: np.ndarray, mean: float, std: float, m: int = 1) -> np.ndarray:
    """Nalisnick et al. 2019's typicality test statistic per group of `m`
    consecutive images: |mean bits/dim of the group - the training mean|,
    in units of the standard error of such a group mean (std / sqrt(size)).
    The last group may be smaller. Far from typical either way scores high:
    images simpler than the data (too likely) as well as noisier ones."""
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        raise UserError(f"typicality group size M must be a whole number >= 1, got {m!r}")
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise UserError(
            f"typicality needs a finite training mean and spread > 0, got {mean} and {std}"
        )
    values = np.asarray(bits_per_dim, np.float64)
    starts = np.arange(0, len(values), m)
    sizes = np.minimum(m, len(values) - starts)
    group_means = np.add.reduceat(values, starts) / sizes
    return np.abs(group_means - mean) / (std / np.sqrt(sizes))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling out-of-distribution images (higher
    scores) from in-distribution ones: P(out > in) + P(out = in) / 2 over all
    pairs (the Mann-Whitney statistic). 1 is perfect, 0.5 chance, 0 inverted."""
    inside, outside = _checked(in_scores), _checked(out_scores)
    pooled = np.concatenate([inside, outside])
    # Average ranks handle ties (equal scores count half).
    order = pooled.argsort(kind="mergesort")
    ranks = np.empty(len(pooled))
    sorted_values = pooled[order]
    edges = np.flatnonzero(np.diff(sorted_values) != 0) + 1
    bounds = np.concatenate([[0], edges, [len(pooled)]])
    for lo, hi in itertools.pairwise(bounds):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2  # ranks lo+1..hi, averaged
    rank_sum = ranks[len(inside) :].sum()
    pairs_won = rank_sum - len(outside) * (len(outside) + 1) / 2
    return float(pairs_won / (len(inside) * len(outside)))


def fpr_at_95_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """False-positive rate at 95% true-positive rate (Liang et al. 2018's
    convention, in-distribution as the positive class): the threshold accepts
    the lowest-scoring `tpr` of the in-distribution images (score <= t, t the
    smallest score that accepts at least that share); the figure is the share
    of out-of-distribution images it accepts too. 0 is perfect."""
    inside, outside = np.sort(_checked(in_scores)), _checked(out_scores)
    threshold = inside[math.ceil(tpr * len(inside)) - 1]
    return float((outside <= threshold).mean())


def _checked(scores: np.ndarray) -> np.ndarray:
    values = np.asarray(scores, np.float64).ravel()
    if len(values) == 0 or np.isnan(values).any():
        raise UserError("AUROC and FPR need at least one score per set and no NaN scores")
    return values
