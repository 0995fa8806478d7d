"""One comparator for any two runners (Polygraphy's Comparator): ONNX
Runtime, a TensorRT plan, genexport's TorchRunner around the PyTorch module,
or a composite such as `RoundTrip`. Anything with `run(feeds) -> outputs`
(numpy arrays by name) is a runner here.

`compare(reference, candidate, cases, tolerances)` runs both on every case
and returns a `Parity` record (genrun/manifest.py), the same record the
manifest stores: genexport's export parity and flow round trip, its TensorRT
plan parity, and the GPU tests all use it. The rules, in one place:

- the error of an output is the max abs difference over every case; NaN and
  shape mismatches count as infinite, equal values agree (infinities
  included: a barely trained flow can sample inf at high temperature, and an
  engine that does the same is faithful);
- `diverged`: a flow sample whose reference images left [-DIVERGED, DIVERGED]
  (or are not finite) is left out of the errors when the candidate's
  diverged too: an overflowing sample is the model's, not the export's. A
  sample that diverges on one side only stays in, and fails;
- a value finite on one side only is a miss, reported (first MAX_MISSES)
  with the case that produced it;
- a tolerance is a number, or a function of the reference's scale (the
  largest finite |value| it produced over the cases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .manifest import BATCH, IMAGES, LABEL, PIXELS, TEMPERATURE, Parity, TensorSpec

Outputs = dict[str, np.ndarray]
Bound = float | Callable[[float], float]
# A flow sample whose images leave [-0.5, 0.5] by this much (or are not finite)
# has diverged: the reverse flow overflowed (early in training, at T near 1).
DIVERGED = 1e4
MAX_MISSES = 3  # one-sided non-finite values reported per comparison
RANDOM_TEMPERATURE = 0.7  # what random inputs feed a "temperature" input


class Runs(Protocol):
    """What compare needs of a runner."""

    def run(self, feeds: Outputs) -> Outputs: ...


@dataclass
class Case:
    """One call of both runners. `where` names it in a miss ("batch of 7,
    seed 7"). With `reference_feeds` the reference gets its own feeds (the
    candidate left inputs to their defaults, the reference was fed them):
    such a case adds to the errors only, not to the scales or the misses."""

    where: str
    feeds: Outputs
    reference_feeds: Outputs | None = None


@dataclass
class Diverged:
    """Which output says a sample diverged, and the per-sample outputs that
    leave out its diverged samples with it."""

    images: str
    pixelwise: set[str] = field(default_factory=set)


def compare(
    reference: Runs,
    candidate: Runs,
    cases: Iterable[Case],
    tolerances: Mapping[str, Bound],
    *,
    precision: str,
    reference_name: str,
    batch_sizes: Sequence[int],
    diverged: Diverged | None = None,
    conditioning: dict[str, float] | None = None,
) -> Parity:
    """Max abs error of every output named in `tolerances`, candidate against
    reference, over `cases` (see the module doc for the rules)."""
    errors = dict.fromkeys(tolerances, 0.0)
    scales = dict.fromkeys(tolerances, 0.0)
    misses: list[str] = []
    for case in cases:
        if case.reference_feeds is not None:
            want, got = reference.run(case.reference_feeds), candidate.run(case.feeds)
            _accumulate(errors, *_without_diverged(got, want, diverged))
            continue
        want, got = reference.run(case.feeds), candidate.run(case.feeds)
        _accumulate(errors, *_without_diverged(got, want, diverged))
        misses += one_sided(got, want, case.where, diverged)
        for name in scales:
            scales[name] = max(scales[name], finite_max(want[name]))
    return Parity(
        precision=precision,
        reference=reference_name,
        batch_sizes=list(batch_sizes),
        max_abs_error=errors,
        tolerance={
            name: bound(scales[name]) if callable(bound) else bound
            for name, bound in tolerances.items()
        },
        conditioning=dict(conditioning or {}),
        misses=misses[:MAX_MISSES],
    )


def merge(first: Parity, second: Parity) -> Parity:
    """One record of two comparisons of the same engine."""
    return Parity(
        precision=first.precision,
        reference=first.reference,
        batch_sizes=first.batch_sizes,
        max_abs_error={**first.max_abs_error, **second.max_abs_error},
        tolerance={**first.tolerance, **second.tolerance},
        conditioning={**first.conditioning, **second.conditioning},
        misses=first.misses + second.misses,
    )


class RoundTrip:
    """A flow's round trip as one runner: uint8 `images` -> the density
    runner's latents (bin centres: its offset left to the default) -> the
    generate runner at temperature 1 -> {"round_trip.images",
    "round_trip.pixels"}. Either runner may be any runner with specs. A
    conditional flow's `label` in the feeds goes to both runners."""

    def __init__(self, density: object, generate: object):
        self.density, self.generate = density, generate
        outputs: list[TensorSpec] = density.outputs  # type: ignore[attr-defined]
        inputs: list[TensorSpec] = generate.inputs  # type: ignore[attr-defined]
        self.latents = [s.name for s in outputs if s.name.startswith("latent_")]
        self.noise = [s.name for s in inputs if s.name not in (TEMPERATURE, LABEL)]

    def run(self, feeds: Outputs) -> Outputs:
        label = {LABEL: feeds[LABEL]} if LABEL in feeds else {}
        latents = self.density.run({IMAGES: feeds[IMAGES], **label})  # type: ignore[attr-defined]
        noise = {n: latents[latent] for n, latent in zip(self.noise, self.latents, strict=True)}
        ones = np.ones(len(feeds[IMAGES]), np.float32)
        images = self.generate.run({**noise, **label, TEMPERATURE: ones})  # type: ignore[attr-defined]
        return {"round_trip.images": images[IMAGES], "round_trip.pixels": images[PIXELS]}


def random_feeds(
    specs: Sequence[TensorSpec], batch: int, seed: int | Sequence[int], classes: int = 1
) -> Outputs:
    """Inputs of these shapes from np.random.default_rng(seed): random pixels,
    standard-normal floats, the temperature RANDOM_TEMPERATURE, a conditional
    graph's labels (every one of `classes` in turn); inputs with a default are
    left to it. genrun bench and the plan parity check feed these."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.default is not None:
            continue
        shape = [batch if size == BATCH else size for size in spec.shape]
        if spec.dtype == "uint8":
            feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif spec.name == LABEL:
            feeds[spec.name] = np.arange(batch, dtype=np.int64) % max(classes, 1)
        elif spec.name == TEMPERATURE:
            feeds[spec.name] = np.full(shape, RANDOM_TEMPERATURE, np.float32)
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(
                spec.dtype, copy=False
            )
    return feeds


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b|; NaN and shape mismatches count as infinite, so they fail
    every bound; equal values agree, infinities included."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore"):
        difference = np.where(a == b, 0.0, np.abs(a - b))
    error = float(difference.max(initial=0.0))
    return float("inf") if np.isnan(error) else error


def diverged_samples(images: np.ndarray) -> np.ndarray:
    """Per sample: any value non-finite or beyond DIVERGED."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        return ~(np.abs(flat) <= DIVERGED).all(axis=1)


def finite_max(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max(initial=0.0))


def one_sided(got: Outputs, want: Outputs, where: str, diverged: Diverged | None) -> list[str]:
    """'name: engine inf, reference -812 at input sample i (where)' for the
    first sample of each output with a value finite on one side only; samples
    whose images diverged in both are left out, as in the comparison."""
    keep = _kept(got, want, diverged)
    misses = []
    for name in [name for name in got if name in want]:
        g, w = got[name], want[name]
        if g.shape != w.shape or g.ndim == 0:
            continue
        if keep is not None and len(g) == len(keep):
            g, w = g[keep], w[keep]
            index = np.flatnonzero(keep)
        else:
            index = np.arange(len(g))
        with np.errstate(invalid="ignore"):
            mismatch = np.isfinite(g) != np.isfinite(w)
            mismatch |= ~np.isfinite(g) & ~np.isfinite(w) & ~(g == w)  # inf vs -inf, NaN
        rows = mismatch.reshape(len(g), -1).any(axis=1)
        for i in np.flatnonzero(rows)[:1]:  # the first sample per output
            flat_g, flat_w = g[i].reshape(-1), w[i].reshape(-1)
            j = int(np.flatnonzero(mismatch[i].reshape(-1))[0])
            misses.append(
                f"{name}: engine {flat_g[j]:.4g}, reference {flat_w[j]:.4g} at input sample "
                f"{int(index[i])} ({where})"
            )
    return misses


def _kept(got: Outputs, want: Outputs, diverged: Diverged | None) -> np.ndarray | None:
    """The samples to compare when both sides diverged on the same ones, else None."""
    if diverged is None or diverged.images not in got:
        return None
    want_diverged = diverged_samples(want[diverged.images])
    if not want_diverged.any():
        return None
    if not np.array_equal(want_diverged, diverged_samples(got[diverged.images])):
        return None
    return ~want_diverged


def _without_diverged(
    got: Outputs, want: Outputs, diverged: Diverged | None
) -> tuple[Outputs, Outputs]:
    keep = _kept(got, want, diverged)
    if keep is None or diverged is None:
        return got, want
    pixelwise = diverged.pixelwise
    return (
        {n: v[keep] if n in pixelwise else v for n, v in got.items()},
        {n: v[keep] if n in pixelwise else v for n, v in want.items()},
    )


def _accumulate(errors: dict[str, float], got: Outputs, want: Outputs) -> None:
    for name in errors:
        errors[name] = max(errors[name], max_abs(got[name], want[name]))
