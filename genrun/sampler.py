"""Sampling with engines, in batches, with numpy noise (scoring: scorer.py).

Noise for item i comes from a stream fixed by (seed, i // BLOCK), never by
the batch it lands in, so a seed gives the same samples and scores at every
batch size (and a run of n is a prefix of a run of n + m).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .engine import Engine
from .errors import UserError
from .labels import classes_for
from .manifest import IMAGES, LABEL, PIXELS, SAMPLING_ROLES, TEMPERATURE, missing_manifest
from .nonfinite import NonFinite

BLOCK = 256  # items per noise stream: a batch of any size slices these
Progress = Callable[[int], object] | None  # called with 1 after each batch (a progress bar)


class BlockNoise:
    """Standard-normal (or, with `uniform`, U[0, 1)) float32 noise of `shapes`
    per item, item i drawn from np.random.default_rng([seed, i // BLOCK])."""

    def __init__(self, seed: int, shapes: list[tuple[int, ...]], uniform: bool = False):
        if not isinstance(seed, int) or seed < 0:
            raise UserError(f"seed must be a whole number >= 0, got {seed!r}")
        self.seed, self.shapes, self.uniform = seed, shapes, uniform
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
            draw = rng.random if self.uniform else rng.standard_normal
            noise = [draw((BLOCK, *shape), dtype=np.float32) for shape in self.shapes]
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
        manifest = engine.manifest
        if manifest is None:  # a foreign graph: nothing says which inputs are noise
            raise UserError(missing_manifest(engine.path, "sampling"))
        what = f"{engine.path} is a {manifest.family} {manifest.role} engine"
        if manifest.role not in SAMPLING_ROLES or PIXELS not in _outputs(engine):
            raise UserError(
                f"{what}; sampling needs a generate or decode engine (e.g. glow generate, "
                "vae decode)"
            )
        if manifest.temperature is None:  # the manifest's word for "has a prior"
            raise UserError(
                f"{what} with no prior to sample from (e.g. an autoencoder's decoder); feed "
                "your own codes via engine.run(z=...)"
            )
        self.engine = engine
        self.noise_inputs = _noise_inputs(engine, (TEMPERATURE, LABEL), "sampling")
        self.input_dtypes = {spec.name: spec.dtype for spec in manifest.inputs}
        # Graphs with a "temperature" input scale their noise themselves.
        self.feeds_temperature = TEMPERATURE in self.input_dtypes
        # A conditional engine's: how many classes its "label" input takes (else 0).
        self.num_classes = len(manifest.classes or []) if LABEL in self.input_dtypes else 0

    def labels(self, n: int, label: int | np.ndarray | None = None) -> np.ndarray | None:
        """The class of each of n samples of a conditional engine, int64 (n,):
        `label` for all, one per sample, or by default class i mod K for sample
        i (every class in turn, whatever the batch size); None for another."""
        if not self.num_classes:
            if label is not None:
                raise UserError(f"{self.engine.path} has no classes to sample; drop the label")
            return None
        if label is None:
            return np.arange(n, dtype=np.int64) % self.num_classes
        labels = np.asarray(label)
        if not np.issubdtype(labels.dtype, np.integer) or labels.ndim > 1:
            raise UserError(f"label must be a class index or one per sample, got {label!r:.60}")
        labels = np.broadcast_to(labels, (n,)) if labels.ndim == 0 else labels
        if labels.shape != (n,):
            raise UserError(f"pass one label or {n} (one per sample), got {len(labels)}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise UserError(f"labels must lie in 0..{self.num_classes - 1} (the engine's classes)")
        return labels.astype(np.int64)

    def sample(
        self,
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        batch_size: int = 256,
        fixed_levels: int = 0,
        nonfinite: str = "error",
        label: int | np.ndarray | None = None,
    ) -> np.ndarray:
        """n samples as uint8 (n, C, H, W); with nonfinite="drop" the finite
        ones only (n minus those dropped). See `batches` for `nonfinite` and
        `label` (a conditional engine's class: one, or one per sample)."""
        batches = self.batches(
            n, temperature, seed, batch_size, fixed_levels, nonfinite, label=label
        )
        return batches.collect()

    def batches(
        self,
        n: int,
        temperature: float = 0.7,
        seed: int = 0,
        batch_size: int = 256,
        fixed_levels: int = 0,
        nonfinite: str | NonFinite = "error",
        first: int = 0,
        label: int | np.ndarray | None = None,
    ) -> SampleBatches:
        """The same n samples as `sample`, as uint8 batches of up to batch_size
        (memory stays bounded for any n). The first `fixed_levels` noise inputs
        are item 0's draw for every sample (an HVAE with 1: samples sharing z1).

        A sample whose continuous "images" hold a NaN or inf is counted in the
        returned iterator's `nonfinite` (and `nonfinite_indices`, the first
        MAX_INDICES of them). `nonfinite`: "error" yields every batch as it
        comes and then raises a UserError with the count if any was seen (so
        a streamed writer discards its temporary file); "drop" leaves them out
        of the batches; "keep" yields them (their pixels are meaningless).
        `first` > 0 yields only items first..n-1 (a worker's share of a run).
        A conditional engine draws sample i of class `label` (one for all, or
        one per sample; default i mod K) from the same noise as any other
        class: the seed fixes the noise, the label only the class."""
        check_count("n", n)
        check_count("batch size", batch_size)
        if not isinstance(first, (int, np.integer)) or not 0 <= first <= n:
            raise UserError(f"first must be a whole number in [0, n], got {first!r}")
        policy = NonFinite(nonfinite)
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
        labels = self.labels(n, label)
        pipeline = self._batches(
            n, scale, BlockNoise(seed, shapes), batch_size, fixed_levels, first, labels
        )
        shape, calls = tuple(self.engine.manifest.data_shape), math.ceil((n - first) / batch_size)
        one_class = None if label is None or np.ndim(label) else [int(label)]
        return SampleBatches(pipeline, n - first, policy, shape, calls, one_class)

    def batches_by_class(
        self,
        n: int,
        classes: list[int],
        temperature: float = 0.7,
        seed: int = 0,
        batch_size: int = 256,
        fixed_levels: int = 0,
        nonfinite: str = "error",
    ) -> SampleBatches:
        """n samples of each class in `classes`, class after class: for each
        class c the very samples of `batches(n, ..., label=c)`, so every class
        gets the same noise (a grid of one row per class shows the classes
        side by side). A conditional engine only."""
        if not self.num_classes:
            raise UserError(f"{self.engine.path} has no classes to sample; drop the label")
        parts = [
            self.batches(n, temperature, seed, batch_size, fixed_levels, nonfinite, label=c)
            for c in classes
        ]

        def pipeline() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            for row, part in enumerate(parts):
                for start, pixels, bad in part._pipeline:
                    yield row * n + start, pixels, bad

        policy, shape = parts[0].policy, parts[0].shape
        calls = sum(part.calls for part in parts)
        return SampleBatches(pipeline(), n * len(classes), policy, shape, calls, classes)

    def _checked_temperature(self, temperature: float) -> np.floating:
        """The temperature in the dtype the graph computes with (the
        temperature input's, else the noise's): 1e39 is finite as a Python
        float but inf in float32, and must be refused, not fed."""
        name = TEMPERATURE if self.feeds_temperature else self.noise_inputs[0]
        dtype = np.dtype(self.input_dtypes[name])
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

    def _batches(
        self,
        n: int,
        temperature: np.floating,
        noise: BlockNoise,
        batch_size: int,
        fixed_levels: int,
        first: int = 0,
        labels: np.ndarray | None = None,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """A pipeline of depth one: while a worker thread runs batch i on the
        engine (ONNX Runtime and the CUDA stream wait without the GIL), this
        thread draws batch i+1's noise and the caller writes batch i-1. The
        same noise in the same order as one call after the other, so the
        samples are identical; at most two batches are in flight. Yields
        (first sample index, pixels, which rows are non-finite)."""
        fixed = noise.take(0, 1)[:fixed_levels]

        def levels(start: int) -> tuple[list[np.ndarray], np.ndarray | None]:
            stop = min(n, start + batch_size)
            drawn = noise.take(start, stop)
            for i, shared in enumerate(fixed):
                drawn[i] = np.repeat(shared, stop - start, axis=0)
            return drawn, None if labels is None else labels[start:stop]

        starts = range(first, n, batch_size)
        if not starts:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrun-engine") as worker:
            running = worker.submit(self._generate, *levels(starts[0]), temperature)
            try:
                for previous, start in itertools.pairwise(starts):
                    upcoming = levels(start)  # drawn while the engine runs the batch before
                    done = running.result()
                    running = worker.submit(self._generate, *upcoming, temperature)
                    yield (previous, *done)  # written by the caller while the engine runs
                yield (starts[-1], *running.result())
            finally:
                running.cancel()  # a caller that stops early leaves no queued batch

    def _generate(
        self, noise: list[np.ndarray], labels: np.ndarray | None, temperature: np.floating
    ) -> tuple[np.ndarray, np.ndarray]:
        """The batch's pixels, and per row whether its "images" are non-finite."""
        if self.feeds_temperature:
            temperatures = np.full(len(noise[0]), temperature, temperature.dtype)
            feeds = {**dict(zip(self.noise_inputs, noise, strict=True)), TEMPERATURE: temperatures}
        else:
            with np.errstate(over="ignore"):  # overflowing noise shows as non-finite samples
                scaled = [temperature * level for level in noise]
            feeds = dict(zip(self.noise_inputs, scaled, strict=True))
        if labels is not None:
            feeds[LABEL] = labels
        outputs = self.engine.run(**feeds)
        pixels, images = outputs[PIXELS], outputs.get(IMAGES)
        if images is None or not np.issubdtype(images.dtype, np.floating):
            return pixels, np.zeros(len(pixels), bool)  # nothing to check: no float output
        return pixels, ~np.isfinite(images.reshape(len(images), -1)).all(axis=1)


def draw(engine: Engine, n: int, label: str | None = None, **options: Any) -> SampleBatches:
    """`genrun sample`'s batches, as users name classes: `label` a class name
    or index for every sample, or 'all' for n samples of each class, class
    after class with the same noise (a grid row each); None: class i mod K.
    `options`: those of `Sampler.batches` (temperature, seed, ...)."""
    sampler = Sampler(engine)
    classes = None if label is None else classes_for(engine.manifest, label)
    if classes is not None and len(classes) > 1:
        return sampler.batches_by_class(n, classes, **options)
    return sampler.batches(n, label=None if classes is None else classes[0], **options)


class SampleBatches(Iterator[np.ndarray]):
    """The iterator `Sampler.batches` returns: uint8 batches of images of
    `shape`, lazily (nothing is drawn before the first is asked for), from
    `calls` engine calls, and the count of non-finite samples seen so far
    (`nonfinite`, of `produced` drawn). `classes`: the class of each grid row
    where one class per row was asked for (one label, or `batches_by_class`),
    else None."""

    MAX_INDICES = 100  # sample indices kept for the message and the caller

    def __init__(
        self,
        pipeline: Iterator[tuple[int, np.ndarray, np.ndarray]],
        n: int,
        policy: NonFinite,
        shape: tuple[int, ...],
        calls: int,
        classes: list[int] | None = None,
    ):
        self.n, self.policy, self.shape, self.calls = n, policy, shape, calls
        self.classes = classes
        self.produced = 0  # samples drawn (kept or not)
        self.nonfinite = 0
        self.nonfinite_indices: list[int] = []
        self._pipeline = pipeline
        self._iterator = self._run(pipeline)

    def of_finite(self, chunks: Iterator[np.ndarray]) -> SampleBatches:
        """The same samples as these, made elsewhere and already checked finite
        (Ray actors refuse non-finite samples themselves), counted the same way."""

        def pipeline() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
            start = 0
            for pixels in chunks:
                yield start, pixels, np.zeros(len(pixels), bool)
                start += len(pixels)

        return SampleBatches(
            pipeline(), self.n, NonFinite.ERROR, self.shape, self.calls, self.classes
        )

    def counted(self, progress: Progress = None) -> Iterator[np.ndarray]:
        """The batches, calling `progress(1)` after each (a progress bar's update)."""
        for batch in self:
            yield batch
            if progress is not None:
                progress(1)

    def collect(self, progress: Progress = None) -> np.ndarray:
        """Every sample as one uint8 array (n, C, H, W), filled batch by batch
        (with "drop", the finite ones only)."""
        out = np.empty((self.n, *self.shape), np.uint8)
        start = 0
        for batch in self.counted(progress):
            out[start : start + len(batch)] = batch
            start += len(batch)
        return out[:start]

    def close(self) -> None:
        """Stop early: the pipeline's worker finishes its batch and stops."""
        self._iterator.close()
        close = getattr(self._pipeline, "close", None)
        if close is not None:
            close()

    def __next__(self) -> np.ndarray:
        return next(self._iterator)

    def __len__(self) -> int:
        return self.n

    def _run(self, pipeline: Iterator[tuple[int, np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
        for start, pixels, bad in pipeline:
            self.produced = start + len(pixels)
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


def check_count(name: str, value: int) -> None:
    """`value` is a whole number >= 1 (a numpy integer too, never a bool)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise UserError(f"{name} must be a whole number >= 1, got {value!r}")
