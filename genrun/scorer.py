"""Scoring images with density and elbo engines: a bound on -log P(x) of each
discrete image, and out-of-distribution scores built on it.

The bound. A flow's density engine gives log p(y) - D log 2^n_bits at
y = (pixel level + u) / 2^n_bits - 0.5 for an offset u in [0, 1)^D. For the
discrete image P(x) = E_u p(y_u) 2^(-n_bits D), so with K uniform offsets

    -log P(x) <= -log (1/K) sum_k p(y_{u_k}) 2^(-n_bits D)

in expectation (K = 1: the dequantised variational bound; K > 1: the
importance-weighted one, tighter as K grows). An elbo engine's log weights
give the same form over K draws of q(z|x) (the IWAE bound), plus the
manifest's discretisation nats. Since P(x) <= 1, -log P(x) >= 0: an estimate
below 0 (possible for a single draw, never for its expectation) is raised to
0 and counted. The density at bin centres (u = 0.5) is not a bound and can be
negative; it stays available as `bits_per_dim_density_at_centers`.

Draws: row r = i * K + j (image i, draw j) takes its noise from the
`BlockNoise` stream of rows, so a seed gives the same scores at every batch
size, and no call draws or runs more than `batch_size` rows (plus one cached
block of noise) whatever K is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .errors import UserError
from .manifest import (
    CLASS_LOG_LIKELIHOOD,
    DENSITY,
    ELBO,
    IMAGES,
    LABEL,
    LOG_LIKELIHOOD,
    LOG_WEIGHT,
    OFFSET,
    TrainingScores,
    missing_manifest,
)
from .ood import compressed_bits, typicality
from .sampler import BlockNoise, _noise_inputs, _outputs, check_count

SCORES = ("nll", "complexity", "typicality", "bpd_density_at_centers")
# Draws K per image unless told: density engines 1 offset (the variational
# bound); elbo engines 100 latents, a runtime's trade of time for a tighter
# bound (gentrain eval's offline default is the family's default_iw_samples,
# 1000 for the VAEs).
DEFAULT_IW_SAMPLES = {DENSITY: 1, ELBO: 100}


@dataclass
class Scores:
    """One score per image (per group of M for typicality), float64;
    higher means more out-of-distribution."""

    name: str  # the score, also the CSV column
    values: np.ndarray
    floored: int  # bound estimates below 0 raised to 0 (see the module doc)
    iw_samples: int | None  # draws K per image of the bound (None: no bound involved)
    seed: int | None  # and their seed

    @property
    def finite(self) -> np.ndarray:
        return self.values[np.isfinite(self.values)]

    @property
    def nonfinite(self) -> int:
        """NaN or infinite values among `values`."""
        return len(self.values) - len(self.finite)


class Scorer:
    """Bounds and OOD scores from an engine with output "log_likelihood"
    (density: fed seeded uniform offsets when it has an "offset" input) or
    "log_weight" (elbo: the inputs other than "images" and "label" without a
    default take noise of the manifest's latent shapes, in order).

    Conditional engines: one with a "label" input scores log P(x|y) and needs
    `labels` (one class per image); a marginal density engine (no label,
    output "class_log_likelihood") scores log P(x), or log P(x|y) given
    `labels`. Either classifies (`classify`)."""

    def __init__(self, engine: Engine):
        if engine.manifest is None:
            raise UserError(missing_manifest(engine.path, "scoring"))
        outputs = _outputs(engine)
        self.exact = LOG_LIKELIHOOD in outputs
        inputs = {spec.name for spec in engine.manifest.inputs}
        if IMAGES not in inputs or not (self.exact or LOG_WEIGHT in outputs):
            raise UserError(
                f"{engine.path} is a {engine.family} {engine.role} engine; scoring needs a "
                "density or elbo engine (output log_likelihood or log_weight)"
            )
        self.engine = engine
        self.noise_inputs = [] if self.exact else _noise_inputs(engine, (IMAGES, LABEL), "scoring")
        self.takes_label = LABEL in inputs  # scores P(x|y), given labels
        self.by_class = CLASS_LOG_LIKELIHOOD in outputs  # P(x) and P(x|y) for every y
        # A density graph without an offset input scores the discrete image itself.
        self.dequantized = self.exact and OFFSET in inputs
        self.dims = math.prod(engine.manifest.data_shape)
        self.default_iw_samples = DEFAULT_IW_SAMPLES[DENSITY if self.exact else ELBO]

    # -- the bound -----------------------------------------------------------------
    def nll(
        self,
        images: np.ndarray,
        iw_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        first: int = 0,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """A bound on -log P(x) in nats of each uint8 image, float64 (N,),
        never negative (see the module doc): K seeded draws per image
        (default: 1 offset for density engines, 100 latents for elbo ones).
        images[0] is image `first` of the whole set: its draws are that
        image's, so a worker's share scores as within the whole. With
        `labels` (int (N,)), a conditional engine's bound on -log P(x|y)."""
        raw = self._raw_nll(images, iw_samples, seed, batch_size, first, labels)
        return np.fmax(raw, 0.0)

    def bits_per_dim(
        self,
        images: np.ndarray,
        iw_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        first: int = 0,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """`nll` in bits per dimension, float64 (N,): gentrain eval's `bpd`
        (flows, K = 1) or the IWAE `bpd` (VAEs); of P(x|y) given `labels`."""
        nll = self.nll(images, iw_samples, seed, batch_size, first, labels)
        return nll / (self.dims * math.log(2))

    def bits_per_dim_density_at_centers(
        self, images: np.ndarray, batch_size: int = 256, labels: np.ndarray | None = None
    ) -> np.ndarray:
        """-log2 of the density at the bin centres (offset 0.5) times the bin
        volume, per dimension: gentrain eval's `bpd_density_at_centers`.
        Deterministic, but NOT a bound on -log2 P(x) / D; it can be negative
        (for images simpler than the data, e.g. all black)."""
        if not self.exact:
            raise UserError(
                f"{self.engine.path} is a {self.engine.family} elbo engine: the density at bin "
                "centres needs a density engine; score nll instead"
            )
        _check_images(images)
        check_count("batch size", batch_size)
        labels = self.checked_labels(images, labels)
        parts = [
            self._log_weights(
                images[start : start + batch_size],
                [],
                None if labels is None else labels[start : start + batch_size],
            )
            for start in range(0, len(images), batch_size)
        ]
        return -np.concatenate(parts).astype(np.float64) / (self.dims * math.log(2))

    # -- the generative classifier -------------------------------------------------
    def classify(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """log p(y|x) (N, K) of each image under a conditional engine, float64,
        from the densities at the bin centres: log P(x|y) + log p(y),
        normalised over y (argmax: the generative classifier). A marginal
        density engine gives every class in one call per batch; a density
        engine with a label input runs once per class."""
        self.check_classifies()
        manifest = self.engine.manifest
        _check_images(images)
        check_count("batch size", batch_size)
        k = len(manifest.classes)
        parts = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            if self.by_class:
                parts.append(self.engine.run(**{IMAGES: batch})[CLASS_LOG_LIKELIHOOD])
            else:
                columns = [
                    self.engine.run(**{IMAGES: batch, LABEL: np.full(len(batch), y, np.int64)})[
                        LOG_LIKELIHOOD
                    ]
                    for y in range(k)
                ]
                parts.append(np.stack(columns, 1))
        joint = np.concatenate(parts).astype(np.float64)
        joint += np.array([c.log_prior for c in manifest.classes])
        peak = joint.max(axis=1, keepdims=True)
        shift = np.where(np.isfinite(peak), peak, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return joint - shift - np.log(np.exp(joint - shift).sum(axis=1, keepdims=True))

    def check_classifies(self) -> None:
        """A one-line UserError unless the engine is a conditional density engine."""
        manifest = self.engine.manifest
        if not manifest.conditional or not (self.exact and (self.by_class or self.takes_label)):
            raise UserError(
                f"{self.engine.path} is not a conditional density engine; classify needs one "
                "(`genexport onnx --marginal` of a model trained with --conditional)"
            )

    def checked_labels(self, images: np.ndarray, labels: np.ndarray | None) -> np.ndarray | None:
        """`labels` as int64 (N,) in 0..K-1, where the engine takes them (a
        label input) or can use them (a marginal engine); refused elsewhere,
        and required by an engine with a label input."""
        manifest, path = self.engine.manifest, self.engine.path
        if labels is None:
            if self.takes_label:
                raise UserError(
                    f"{path} scores P(x|y): pass one label per image (--label-from FILE), or "
                    "score P(x) with the marginal density engine (`genexport onnx --marginal`)"
                )
            return None
        if not (self.takes_label or self.by_class):
            raise UserError(f"{path} is not from a conditional model; drop the labels")
        labels = np.asarray(labels)
        k = len(manifest.classes)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(f"pass one integer label per image ({len(images)}), got {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise UserError(f"labels must lie in 0..{k - 1} (this engine's classes)")
        return labels.astype(np.int64)

    # -- out-of-distribution scores ------------------------------------------------
    def score(
        self,
        images: np.ndarray,
        score: str = "nll",
        iw_samples: int | None = None,
        seed: int = 0,
        batch_size: int = 256,
        m: int = 1,
        labels: np.ndarray | None = None,
    ) -> Scores:
        """One of SCORES per image, higher = more out-of-distribution:
        nll: the bound in bits/dim; complexity: it minus L(x) / D, L the PNG
        length in bits (Serra et al. 2020); typicality: |group mean bits/dim -
        the training mean| / (training std / sqrt(M)) per group of `m`
        consecutive images (Nalisnick et al. 2019), with the manifest's
        training statistics and their K (iw_samples); bpd_density_at_centers (no bound)."""
        if score not in SCORES:
            raise UserError(f"unknown score {score!r}; use one of: {', '.join(SCORES)}")
        if score == "bpd_density_at_centers":
            values = self.bits_per_dim_density_at_centers(images, batch_size, labels)
            return Scores(score, values, 0, None, None)
        stats = self.training_scores() if score == "typicality" else None
        if stats is not None:
            if iw_samples is not None and iw_samples != stats.iw_samples:
                raise UserError(
                    "typicality compares with training statistics computed with "
                    f"iw_samples = {stats.iw_samples}; drop --iw-samples or pass "
                    f"--iw-samples {stats.iw_samples}"
                )
            iw_samples, seed = stats.iw_samples, stats.seed
        k = self._k(iw_samples)
        raw = self._raw_nll(images, k, seed, batch_size, labels=labels)
        floored = int((raw < 0).sum())
        bpd = np.fmax(raw, 0.0) / (self.dims * math.log(2))
        if score == "nll":
            values = bpd
        elif score == "complexity":
            n_bits = self.engine.manifest.pixels.n_bits
            values = bpd - compressed_bits(np.asarray(images), n_bits) / self.dims
        else:
            values = typicality(bpd, stats.bpd_mean, stats.bpd_std, m)
        return Scores(score, values, floored, k, seed)

    def training_scores(self) -> TrainingScores:
        """The manifest's training bits/dim statistics, or a UserError saying
        how to get them."""
        stats = self.engine.manifest.training_scores
        if stats is None:
            raise UserError(
                f"{self.engine.path} carries no training statistics (manifest version "
                f"{self.engine.manifest.version}); re-export it with this vaeflow's "
                "`genexport onnx CKPT` (with --data if the training data moved) to score "
                "typicality"
            )
        return stats

    # -- the streamed importance-weighted estimate ---------------------------------
    def _k(self, iw_samples: int | None) -> int:
        k = self.default_iw_samples if iw_samples is None else iw_samples
        check_count("iw_samples", k)
        if not self.dequantized and self.exact and k != 1:
            raise UserError(
                f"{self.engine.path} has no offset input: its log_likelihood is exact, so "
                f"iw_samples must be 1, got {k}"
            )
        return k

    def _raw_nll(
        self,
        images: np.ndarray,
        iw_samples: int | None,
        seed: int,
        batch_size: int,
        first: int = 0,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """-(log (1/K) sum_k w_ik) per image before the floor at 0; weights
        streamed in calls of at most `batch_size` rows."""
        images = np.asarray(images)
        _check_images(images)
        check_count("batch size", batch_size)
        labels = self.checked_labels(images, labels)
        k = self._k(iw_samples)
        if self.exact:
            shapes = [tuple(self.engine.manifest.data_shape)] if self.dequantized else []
            extra = 0.0  # the graph's log P includes the discretisation term
        else:
            shapes = [tuple(shape) for shape in self.engine.manifest.latent_shapes]
            extra = self.engine.manifest.pixels.discretization_nats
        noise = BlockNoise(seed, shapes, uniform=self.exact)
        total = _LogMeanExp(len(images))
        rows = len(images) * k
        for start in range(0, rows, batch_size):
            stop = min(rows, start + batch_size)
            owner = np.arange(start, stop) // k  # image of each row
            offset = first * k  # draws follow the image's index in the whole set
            draws = noise.take(offset + start, offset + stop) if shapes else []
            rows_labels = None if labels is None else labels[owner]
            total.add(owner, self._log_weights(images[owner], draws, rows_labels))
        return -total.result(k) + extra

    def _log_weights(
        self, images: np.ndarray, draws: list[np.ndarray], labels: np.ndarray | None = None
    ) -> np.ndarray:
        """One call's log weights (log P, or log w), of P(x|y) given labels."""
        feeds = {LABEL: labels} if self.takes_label else {}
        if self.exact:
            if draws and self.dequantized:
                feeds[OFFSET] = draws[0]
            outputs = self.engine.run(**{IMAGES: images}, **feeds)
            if labels is not None and self.by_class:  # a marginal engine's column of y
                return outputs[CLASS_LOG_LIKELIHOOD][np.arange(len(labels)), labels]
            return outputs[LOG_LIKELIHOOD]
        feeds.update(zip(self.noise_inputs, draws, strict=True))
        return self.engine.run(**{IMAGES: images}, **feeds)[LOG_WEIGHT]


class _LogMeanExp:
    """log (1/K) sum_k exp(w_k) per image, folded in as rows arrive (each
    image's rows contiguous), without overflow: a running maximum per image
    rescales its running sum. NaN and +inf weights are tracked apart so that
    they stay what they are in the result."""

    def __init__(self, n: int):
        self.peak = np.full(n, -np.inf)
        self.sum = np.zeros(n)
        self.nan = np.zeros(n, bool)
        self.posinf = np.zeros(n, bool)

    def add(self, owner: np.ndarray, weights: np.ndarray) -> None:
        w = np.asarray(weights, np.float64)
        images, starts = np.unique(owner, return_index=True)
        self.nan[images] |= np.logical_or.reduceat(np.isnan(w), starts)
        self.posinf[images] |= np.logical_or.reduceat(w == np.inf, starts)
        w = np.where(np.isnan(w) | (w == np.inf), -np.inf, w)
        old = self.peak[images]
        new = np.maximum(old, np.maximum.reduceat(w, starts))
        shift = np.where(np.isfinite(new), new, 0.0)  # all -inf so far: sums stay 0
        with np.errstate(over="ignore", invalid="ignore"):
            rescale = np.where(np.isfinite(old), np.exp(old - shift), 0.0)
            terms = np.exp(w - np.repeat(shift, np.diff(np.append(starts, len(w)))))
        self.sum[images] = self.sum[images] * rescale + np.add.reduceat(terms, starts)
        self.peak[images] = new

    def result(self, k: int) -> np.ndarray:
        shift = np.where(np.isfinite(self.peak), self.peak, 0.0)
        with np.errstate(divide="ignore"):
            out = shift + np.log(self.sum) - math.log(k)
        out[self.posinf] = np.inf
        out[self.nan] = np.nan
        return out


def _check_images(images: np.ndarray) -> None:
    if len(images) == 0:
        raise UserError("no images to score; pass at least one")
