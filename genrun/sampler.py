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
# What a sample with NaN/inf in its continuous "images" becomes: "error" (count
# them all, then refuse: nothing written), "drop" (left out, counted) or "keep"
# (written as the graph's pixels, whose uint8 cast of NaN/inf means nothing).
NONFINITE = ("error", "drop", "keep")


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


def _noise_inputs(engine: Engine, others: tuple[str, ...], purpose: str) -> list[str]:
    """The names of the inputs that take latent noise: those without a default
    that are not in `others`, in graph order, one per manifest latent shape."""
    manifest = engine.manifest
    names = [s.name for s in manifest.inputs if s.default is None and s.name not in others]
    if len(names) != len(manifest.latent_shapes):
        raise UserError(
            f"{engine.path}: {purpose} feeds noise inputs {names} from the manifest's "
            f"{len(manifest.latent_shapes)} latent shapes, which do not pair up; re-export the "
            "engine with `genexport onnx`"
        )
    return names


def _outputs(engine: Engine) -> set[str]:
    return {spec.name for spec in engine.manifest.outputs}


class Sampler:
    """Draws uint8 images from a `generate` or `decode` engine of any family
    whose prior is standard-normal noise: the inputs without a default (other
    than "temperature") take noise of the manifest's latent shapes, in order,
    and the "pixels" output is the sample."""

    def __init__(self, engine: Engine):
        engine.require_manifest("sampling")
        if engine.role not in ("generate", "decode") or "pixels" not in _outputs(engine):
            raise UserError(
                f"{engine.path} is a {engine.family} {engine.role} engine; sampling needs a "
                "generate or decode engine (e.g. glow generate, vae decode)"
            )
        if engine.family == "ae":
            raise UserError(
                f"{engine.path} is an autoencoder decoder: an autoencoder has no prior to "
                "sample from; feed your own codes via engine.run(z=...)"
            )
        self.engine = engine
        self.noise_inputs = _noise_inputs(engine, ("temperature",), "sampling")
        # Graphs with a "temperature" input scale their noise themselves.
        self.feeds_temperature = "temperature" in {s.name for s in engine.manifest.inputs}

    def sample(
        self,
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        batch_size: int = 256,
        fixed_levels: int = 0,
        nonfinite: str = "error",
    ) -> np.ndarray:
        """n samples as uint8 (n, C, H, W); with nonfinite="drop" the finite
        ones only (n minus those dropped). See `batches` for `nonfinite`."""
        batches = self.batches(n, temperature, seed, batch_size, fixed_levels, nonfinite)
        out = np.empty((n, *self.engine.manifest.data_shape), np.uint8)
        start = 0
        for batch in batches:
            out[start : start + len(batch)] = batch
            start += len(batch)
        return out[:start]

    def batches(
        self,
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        batch_size: int = 256,
        fixed_levels: int = 0,
        nonfinite: str = "error",
    ) -> SampleBatches:
        """The same n samples as `sample`, as uint8 batches of up to batch_size
        (memory stays bounded for any n). The first `fixed_levels` noise inputs
        are item 0's draw for every sample (an HVAE with 1: samples sharing z1).

        A sample whose continuous "images" hold a NaN or inf is counted in the
        returned iterator's `nonfinite` (and `nonfinite_indices`, the first
        MAX_INDICES of them). `nonfinite`: "error" yields every batch as it
        comes and then raises a UserError with the count if any was seen (so
        a streamed writer discards its temporary file); "drop" leaves them out
        of the batches; "keep" yields them (their pixels are meaningless)."""
        _check_count("n", n)
        _check_count("batch size", batch_size)
        if nonfinite not in NONFINITE:
            raise UserError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
        scale = self._checked_temperature(temperature)
        levels = len(self.noise_inputs)
        if (
            not isinstance(fixed_levels, (int, np.integer))
            or isinstance(fixed_levels, bool)
            or not 0 <= fixed_levels <= levels
        ):
            raise UserError(
                f"fixed levels must be a whole number from 0 to {levels} (this engine's "
                f"noise inputs: {', '.join(self.noise_inputs)}), got {fixed_levels!r}"
            )
        shapes = [tuple(shape) for shape in self.engine.manifest.latent_shapes]
        return SampleBatches(
            self, n, scale, BlockNoise(seed, shapes), batch_size, fixed_levels, nonfinite
        )

    def _checked_temperature(self, temperature: float) -> np.floating:
        """The temperature in the dtype the graph computes with (the
        temperature input's, else the noise's): 1e39 is finite as a Python
        float but inf in float32, and must be refused, not fed."""
        name = "temperature" if self.feeds_temperature else self.noise_inputs[0]
        dtype = np.dtype(self.engine.manifest.input(name).dtype)
        try:
            scale = float(temperature)
        except (TypeError, ValueError, OverflowError):  # 10**400 overflows a float
            scale = math.nan
        with np.errstate(over="ignore", invalid="ignore"):
            cast = dtype.type(scale)
        if not (math.isfinite(scale) and np.isfinite(cast) and scale >= 0):
            limit = float(np.finfo(dtype).max) if dtype.kind == "f" else math.inf
            raise UserError(
                f"temperature must be a finite number >= 0 in the engine's {dtype} "
                f"(at most {limit:.4g}), got {temperature!r}"
            )
        return cast

    def _generate(self, noise: list[np.ndarray], temperature: np.floating) -> dict:
        if self.feeds_temperature:
            temperatures = np.full(len(noise[0]), temperature, temperature.dtype)
            feeds = dict(zip(self.noise_inputs, noise, strict=True), temperature=temperatures)
        else:
            with np.errstate(over="ignore"):  # overflowing noise shows as non-finite samples
                scaled = [temperature * level for level in noise]
            feeds = dict(zip(self.noise_inputs, scaled, strict=True))
        return self.engine.run(**feeds)


class SampleBatches:
    """The iterator `Sampler.batches` returns: uint8 batches, and the count of
    non-finite samples seen so far (`nonfinite`, of `produced` drawn)."""

    MAX_INDICES = 100  # sample indices kept for the message and the caller

    def __init__(
        self,
        sampler: Sampler,
        n: int,
        temperature: np.floating,
        noise: BlockNoise,
        batch_size: int,
        fixed_levels: int,
        policy: str,
    ):
        self.n, self.policy = n, policy
        self.produced = 0  # samples drawn (kept or not)
        self.nonfinite = 0
        self.nonfinite_indices: list[int] = []
        self._iterator = self._run(sampler, temperature, noise, batch_size, fixed_levels)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iterator)

    def __len__(self) -> int:
        return self.n

    def _run(
        self,
        sampler: Sampler,
        temperature: np.floating,
        noise: BlockNoise,
        batch_size: int,
        fixed_levels: int,
    ) -> Iterator[np.ndarray]:
        fixed = noise.take(0, 1)[:fixed_levels]
        for start in range(0, self.n, batch_size):
            stop = min(self.n, start + batch_size)
            levels = noise.take(start, stop)
            for i, first in enumerate(fixed):
                levels[i] = np.repeat(first, stop - start, axis=0)
            outputs = sampler._generate(levels, temperature)
            pixels = outputs["pixels"]
            bad = nonfinite_rows(outputs.get("images"), len(pixels))
            self.produced = stop
            if bad.any():
                where = np.flatnonzero(bad)
                self.nonfinite += len(where)
                room = self.MAX_INDICES - len(self.nonfinite_indices)
                self.nonfinite_indices += [start + int(i) for i in where[:room]]
                if self.policy == "drop":
                    pixels = pixels[~bad]
            if len(pixels):
                yield pixels
        if self.policy == "error" and self.nonfinite:
            raise UserError(
                f"{self.nonfinite} of {self.n} samples have NaN or inf in their images "
                f"(first at sample {self.nonfinite_indices[0]}), so nothing was written; "
                "pass --nonfinite drop (nonfinite='drop') to leave them out or keep to write "
                "them, or lower the temperature"
            )

    def summary(self) -> str:
        """'K of N samples non-finite (dropped|kept)', or '' when there were none."""
        if not self.nonfinite:
            return ""
        done = "dropped" if self.policy == "drop" else "kept, their pixels are meaningless"
        return (
            f"{self.nonfinite} of {self.produced} samples had NaN or inf in their images ({done})"
        )


def nonfinite_rows(images: np.ndarray | None, rows: int) -> np.ndarray:
    """Per row of a batch: True where any value is NaN or inf (all False
    when there is nothing to check: no float "images" output)."""
    if images is None or not np.issubdtype(images.dtype, np.floating):
        return np.zeros(rows, bool)
    return ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)


class Scorer:
    """Per-image likelihoods from an engine with output "log_likelihood" (exact,
    e.g. glow/realnvp density) or "log_weight" (importance sampled, e.g. vae/hvae
    elbo: the inputs other than "images" without a default take noise of the
    manifest's latent shapes, in order)."""

    def __init__(self, engine: Engine):
        engine.require_manifest("scoring")
        outputs = _outputs(engine)
        self.exact = "log_likelihood" in outputs
        images = any(spec.name == "images" for spec in engine.manifest.inputs)
        if not images or not (self.exact or "log_weight" in outputs):
            raise UserError(
                f"{engine.path} is a {engine.family} {engine.role} engine; scoring needs a "
                "density or elbo engine (output log_likelihood or log_weight)"
            )
        self.engine = engine
        self.noise_inputs = [] if self.exact else _noise_inputs(engine, ("images",), "scoring")
        self.dims = math.prod(engine.manifest.data_shape)

    def nll(
        self, images: np.ndarray, k: int = 100, seed: int = 0, batch_size: int = 256
    ) -> np.ndarray:
        """-log P(x) in nats of each uint8 image, float64 (N,). Density engines:
        exact (k and seed unused; glow at bin centres). Elbo engines: the
        importance-sampled bound with k draws of q(z|x),
        -(logsumexp_k log_weight_k - log k) + the manifest's discretisation
        nats; draws depend on (seed, image index) only."""
        _check_count("batch size", batch_size)
        if len(images) == 0:
            raise UserError("no images to score; pass at least one")
        if self.exact:
            parts = [
                self.engine.run(images=images[start : start + batch_size])["log_likelihood"]
                for start in range(0, len(images), batch_size)
            ]
            return -np.concatenate(parts).astype(np.float64)
        return self._importance_nll(images, k, seed, batch_size)

    def bits_per_dim(
        self, images: np.ndarray, k: int = 100, seed: int = 0, batch_size: int = 256
    ) -> np.ndarray:
        """`nll` in bits per dimension, float64 (N,): gentrain eval's
        bpd_center for Glow, its IWAE bpd for a VAE."""
        return self.nll(images, k, seed, batch_size) / (self.dims * math.log(2))

    def _importance_nll(self, images: np.ndarray, k: int, seed: int, batch_size: int) -> np.ndarray:
        _check_count("k", k)
        latents = [tuple(shape) for shape in self.engine.manifest.latent_shapes]
        noise = BlockNoise(seed, [(k, *latent) for latent in latents])
        per_call = max(1, batch_size // k)  # batch_size bounds the rows of one graph call
        nll = np.empty(len(images))
        for start in range(0, len(images), per_call):
            chunk = images[start : start + per_call]
            draws = noise.take(start, start + len(chunk))
            feeds = {
                name: eps.reshape(-1, *latent)
                for name, eps, latent in zip(self.noise_inputs, draws, latents, strict=True)
            }
            repeated = np.repeat(np.asarray(chunk), k, axis=0)
            weights = self.engine.run(images=repeated, **feeds)["log_weight"]
            weights = weights.astype(np.float64).reshape(len(chunk), k)
            peak = weights.max(axis=1, keepdims=True)  # logsumexp without overflow
            log_mean = peak[:, 0] + np.log(np.exp(weights - peak).mean(axis=1))
            nll[start : start + len(chunk)] = -log_mean
        return nll + self.engine.manifest.pixels.discretization_nats


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a whole number >= 1, got {value!r}")
