"""Sampling and scoring with engines, in batches, with numpy noise.

Noise for item i comes from a stream fixed by (seed, i // BLOCK), never by
the batch it lands in, so a seed gives the same samples and scores at every
batch size (and a run of n is a prefix of a run of n + m).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .engine import Engine
from .errors import UserError

BLOCK = 256  # items per noise stream: a batch of any size slices these


class BlockNoise:
    """Standard-normal float32 noise of `shapes` per item, item i drawn from
    np.random.default_rng([seed, i // BLOCK])."""

    def __init__(self, seed: int, shapes: list[tuple[int, ...]]):
        if not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed must be a whole number >= 0, got {seed!r}")
        self.seed, self.shapes = seed, shapes
        self._cached: tuple[int, list[np.ndarray]] | None = None  # batches reuse their block

    def take(self, start: int, stop: int) -> list[np.ndarray]:
        """The noise of items start..stop-1, one array per shape."""
        parts = []
        for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
            first = block * BLOCK
            lo, hi = max(start, first) - first, min(stop, first + BLOCK) - first
            parts.append([noise[lo:hi] for noise in self._block(block)])
        return [np.concatenate(arrays) for arrays in zip(*parts, strict=True)]

    def _block(self, block: int) -> list[np.ndarray]:
        if self._cached is None or self._cached[0] != block:
            rng = np.random.default_rng([self.seed, block])
            noise = [
                rng.standard_normal((BLOCK, *shape), dtype=np.float32) for shape in self.shapes
            ]
            self._cached = (block, noise)
        return self._cached[1]


def _require_role(engine: Engine, purpose: str, *accepted: tuple[str, str]) -> Engine:
    """The engine itself if its (family, role) is one of `accepted`, else a UserError."""
    if (engine.family, engine.role) not in accepted:
        wanted = " or ".join(f"{family} {role}" for family, role in accepted)
        raise UserError(
            f"{engine.path} is a {engine.family} {engine.role} engine; {purpose} needs a "
            f"{wanted} engine"
        )
    return engine


class Sampler:
    """Draws uint8 images from a Glow `generate` or a VAE `decode` engine."""

    def __init__(self, engine: Engine):
        self.engine = _require_role(engine, "sampling", ("glow", "generate"), ("vae", "decode"))

    def sample(
        self, n: int, temperature: float = 0.7, seed: int = 0, batch_size: int = 256
    ) -> np.ndarray:
        """n samples as uint8 (n, C, H, W)."""
        batches = self.batches(n, temperature, seed, batch_size)  # checks the arguments
        out = np.empty((n, *self.engine.manifest.data_shape), np.uint8)
        start = 0
        for batch in batches:
            out[start : start + len(batch)] = batch
            start += len(batch)
        return out

    def batches(
        self, n: int, temperature: float = 0.7, seed: int = 0, batch_size: int = 256
    ) -> Iterator[np.ndarray]:
        """The same n samples as `sample`, as uint8 batches of up to batch_size
        (memory stays bounded for any n)."""
        _check_count("n", n)
        _check_count("batch size", batch_size)
        try:
            scale = float(temperature)
        except (TypeError, ValueError):
            scale = math.nan
        if not (math.isfinite(scale) and scale >= 0):
            raise UserError(f"temperature must be a finite number >= 0, got {temperature!r}")
        shapes = [tuple(shape) for shape in self.engine.manifest.latent_shapes]
        return self._batches(n, scale, BlockNoise(seed, shapes), batch_size)

    def _batches(
        self, n: int, temperature: float, noise: BlockNoise, batch_size: int
    ) -> Iterator[np.ndarray]:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            yield self._generate(noise.take(start, stop), temperature)

    def _generate(self, noise: list[np.ndarray], temperature: float) -> np.ndarray:
        if self.engine.family == "glow":  # the graph scales noise_i by temperature itself
            feeds = {f"noise_{i}": level for i, level in enumerate(noise)}
            temperatures = np.full(len(noise[0]), temperature, np.float32)
            return self.engine.run(**feeds, temperature=temperatures)["pixels"]
        return self.engine.run(z=np.float32(temperature) * noise[0])["pixels"]


class Scorer:
    """Per-image likelihoods from a Glow `density` or a VAE `elbo` engine."""

    def __init__(self, engine: Engine):
        self.engine = _require_role(engine, "scoring", ("glow", "density"), ("vae", "elbo"))
        self.dims = math.prod(engine.manifest.data_shape)

    def nll(
        self, images: np.ndarray, k: int = 100, seed: int = 0, batch_size: int = 256
    ) -> np.ndarray:
        """-log P(x) in nats of each uint8 image, float64 (N,). Glow: exact at bin
        centres (k and seed unused). VAE: the importance-sampled bound with k
        draws of q(z|x), -(logsumexp_k log_weight_k - log k) + the manifest's
        discretisation nats; draws depend on (seed, image index) only."""
        _check_count("batch size", batch_size)
        if len(images) == 0:
            raise UserError("no images to score; pass at least one")
        if self.engine.family == "glow":
            parts = [
                self.engine.run(images=images[start : start + batch_size])["log_likelihood"]
                for start in range(0, len(images), batch_size)
            ]
            return -np.concatenate(parts).astype(np.float64)
        return self._vae_nll(images, k, seed, batch_size)

    def bits_per_dim(
        self, images: np.ndarray, k: int = 100, seed: int = 0, batch_size: int = 256
    ) -> np.ndarray:
        """`nll` in bits per dimension, float64 (N,): gentrain eval's
        bpd_center for Glow, its IWAE bpd for a VAE."""
        return self.nll(images, k, seed, batch_size) / (self.dims * math.log(2))

    def _vae_nll(self, images: np.ndarray, k: int, seed: int, batch_size: int) -> np.ndarray:
        _check_count("k", k)
        latent = tuple(self.engine.manifest.latent_shapes[0])
        noise = BlockNoise(seed, [(k, *latent)])
        per_call = max(1, batch_size // k)  # batch_size bounds the rows of one graph call
        nll = np.empty(len(images))
        for start in range(0, len(images), per_call):
            chunk = images[start : start + per_call]
            eps = noise.take(start, start + len(chunk))[0].reshape(-1, *latent)
            repeated = np.repeat(np.asarray(chunk), k, axis=0)
            weights = self.engine.run(images=repeated, eps=eps)["log_weight"]
            weights = weights.astype(np.float64).reshape(len(chunk), k)
            peak = weights.max(axis=1, keepdims=True)  # logsumexp without overflow
            log_mean = peak[:, 0] + np.log(np.exp(weights - peak).mean(axis=1))
            nll[start : start + len(chunk)] = -log_mean
        return nll + self.engine.manifest.pixels.discretization_nats


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a whole number >= 1, got {value!r}")
