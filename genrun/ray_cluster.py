"""Sampling and scoring on a Ray cluster (`genrun sample|likelihood --ray`),
with the results of one process.

A Ray Data pipeline whose actors each hold one engine (`map_batches` with a
callable class on an `ActorPoolStrategy`). The work is cut into units that are
whole noise blocks (BlockNoise: item i's noise depends only on (seed, i)) and
whole engine batches of the one-process run, and every row carries its index,
so the samples equal the one-process run bit for bit and the scores to float
rounding, in the same order. The engine file travels to the actors as bytes,
so the workers of a cluster need no shared disk for it.

Ray is the `vaeflow[ray]` extra, imported only here and only when called.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .engine import load
from .errors import UserError
from .manifest import BITS_PER_DIM, IMAGES, PIXELS
from .nonfinite import NonFinite
from .outputs import SampleOutput, check_writable
from .readers import read_image_files
from .sampler import BLOCK, SampleBatches, Sampler, check_count
from .scorer import Scorer, Scores

RAY_MISSING = "--ray needs Ray: pip install 'vaeflow[ray]' (or drop --ray to run in one process)"
# Actors ask for fractions of a CPU and leave one whole CPU of the cluster to
# Ray Data's own tasks (a parquet write): an actor pool that holds every CPU
# starves them (ray-project/ray issue 44687) and the pipeline waits forever.
ACTOR_CPUS = 0.9  # at most, per actor
PARQUET = ".parquet"  # genrun sample --out DIR.parquet: shards written by the actors


def _ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


def start(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to the Ray cluster at `address` ("auto": the one this machine
    belongs to), or start a local Ray when None; a no-op if Ray is running."""
    ray = _ray()
    if not ray.is_initialized():
        try:
            ray.init(
                address=address,
                num_cpus=num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise UserError(
                f"cannot reach a Ray cluster at {address} ({first}); start one with "
                "`ray start --head`, or drop --ray-address for a local Ray"
            ) from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in index order
    context.enable_progress_bars = False


class _EngineActor:
    """Holds one engine, loaded from the bytes of the file (workers need no
    shared disk)."""

    def __init__(self, engine_bytes: bytes, name: str, provider: str, threads: int) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="genrun-ray-")
        path = Path(self._folder.name) / name
        path.write_bytes(engine_bytes)
        self.engine = load(path, provider, threads=threads)


class _SampleActor(_EngineActor):
    def __init__(self, options: dict[str, Any], **engine: Any) -> None:
        super().__init__(**engine)
        self.sampler = Sampler(self.engine)
        self.options = options

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        unit, n = self.options["unit"], self.options["n"]
        first = int(rows["id"][0]) * unit
        stop = min(n, first + unit)
        options = {k: v for k, v in self.options.items() if k not in ("unit", "n")}
        if isinstance(options.get("label"), np.ndarray):  # one per sample: the first `stop`
            options["label"] = options["label"][:stop]
        pixels = self.sampler.batches(stop, first=first, **options).collect()
        return {"index": np.arange(first, stop), PIXELS: pixels}


class _ScoreActor(_EngineActor):
    def __init__(self, options: dict[str, Any], **engine: Any) -> None:
        super().__init__(**engine)
        self.scorer = Scorer(self.engine)
        self.options = options

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = int(rows["first"][0])
        if "paths" in rows:
            shape = tuple(self.engine.manifest.data_shape)
            images = read_image_files([Path(p) for p in rows["paths"][0]], shape)
        else:
            images = np.asarray(rows[IMAGES][0])
        labels = np.asarray(rows["labels"][0]) if "labels" in rows else None
        scores = self.scorer.bits_per_dim(images, first=first, labels=labels, **self.options)
        return {"index": np.arange(first, first + len(images)), BITS_PER_DIM: scores}


def _pool(actors: int, cpus: float | None):
    check_count("--actors", actors)
    ray = _ray()
    if cpus is None:
        spare = max(ray.cluster_resources().get("CPU", 1) - 1, 0.1)
        cpus = min(ACTOR_CPUS, spare / actors)
    return {"compute": ray.data.ActorPoolStrategy(size=actors), "num_cpus": cpus}


def _engine_args(engine: str | Path, provider: str, threads: int) -> dict[str, Any]:
    path = Path(engine)
    return {
        "engine_bytes": path.read_bytes(),
        "name": path.name,
        "provider": provider,
        "threads": threads,
    }


def sample_dataset(
    engine: str | Path,
    n: int,
    temperature: float = 0.7,
    seed: int = 0,
    batch_size: int = 256,
    fixed_levels: int = 0,
    actors: int = 2,
    provider: str = "auto",
    threads: int = 1,
    actor_cpus: float | None = None,
    label: int | np.ndarray | None = None,
) -> Any:
    """A Ray Dataset of the n samples of `Sampler.sample(n, temperature, seed,
    batch_size, fixed_levels, label=label)`, rows {"index", "pixels" uint8 (C, H, W)} in
    index order, on the running Ray (see `start`). Each actor call makes a
    unit of lcm(BLOCK, batch_size) items: whole noise blocks and whole engine
    batches of the one-process run, so each engine call sees the rows it sees
    there."""
    local = Sampler(load(engine, provider, threads=threads))
    # Checks the arguments here.
    local.batches(n, temperature, seed, batch_size, fixed_levels, label=label)
    ray = _ray()
    unit = math.lcm(BLOCK, batch_size)
    options = dict(
        n=n, unit=unit, temperature=temperature, seed=seed, batch_size=batch_size,
        fixed_levels=fixed_levels, label=label,
    )  # fmt: skip
    units = math.ceil(n / unit)
    # from_items, not range: no read tasks competing with the actors for CPUs.
    rows = [{"id": u} for u in range(units)]
    return ray.data.from_items(rows, override_num_blocks=min(units, 1000)).map_batches(
        _SampleActor,
        batch_size=1,
        fn_constructor_kwargs={"options": options, **_engine_args(engine, provider, threads)},
        **_pool(actors, actor_cpus),
    )


def sample_batches(engine: str | Path, n: int, **options: Any) -> Iterator[np.ndarray]:
    """`sample_dataset`'s samples as uint8 (m, C, H, W) chunks in index order,
    streamed (the driver holds a few chunks at a time)."""
    dataset = sample_dataset(engine, n, **options)
    return (pixels for _, pixels in _in_order(dataset, PIXELS, n))


def sample(engine: str | Path, n: int, **options: Any) -> np.ndarray:
    """`sample_batches` gathered into one uint8 (n, C, H, W) array."""
    return np.concatenate(list(sample_batches(engine, n, **options)))


def write_parquet(dataset: Any, out: Path) -> None:
    """Write a dataset as a folder of parquet shards (one per block, rows
    keep their "index"), under a hidden name until complete."""
    if out.exists():
        raise UserError(f"{out} exists; pick a new --out")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        dataset.write_parquet(str(tmp))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def score(
    engine: str | Path,
    images: np.ndarray | list[Path],
    iw_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    actors: int = 2,
    provider: str = "auto",
    threads: int = 1,
    actor_cpus: float | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """`Scorer.bits_per_dim(images, iw_samples, seed, batch_size, labels=labels)`
    on the running Ray, float64 (N,) in the images' order. `images`: uint8
    (N, C, H, W), or image file paths, read by the actors with
    `read_image_files` (the files must be visible to the workers)."""
    scorer = Scorer(load(engine, provider, threads=threads))  # refuses a non-scoring engine
    if len(images) == 0:
        raise UserError("no images to score; pass at least one")
    if labels is not None or scorer.takes_label:  # checks them here, in one line
        labels = scorer.checked_labels(np.empty(len(images)), labels)
    ray = _ray()
    is_paths = not isinstance(images, np.ndarray)
    if is_paths:
        for path in images:
            if not Path(path).is_file():
                raise UserError(f"image file {path} does not exist; check the path")
    # Images per actor call: whole engine calls' worth (each is batch_size rows).
    chunk = max(16, batch_size)
    rows = [
        {"first": first, "paths": [str(p) for p in images[first : first + chunk]]}
        if is_paths
        else {"first": first, IMAGES: images[first : first + chunk]}
        for first in range(0, len(images), chunk)
    ]
    if labels is not None:
        for row in rows:
            row["labels"] = labels[row["first"] : row["first"] + chunk]
    dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 1000)).map_batches(
        _ScoreActor,
        batch_size=1,
        fn_constructor_kwargs={
            "options": {"iw_samples": iw_samples, "seed": seed, "batch_size": batch_size},
            **_engine_args(engine, provider, threads),
        },
        **_pool(actors, actor_cpus),
    )
    return np.concatenate([scores for _, scores in _in_order(dataset, BITS_PER_DIM, len(images))])


def cli_samples(
    batches: SampleBatches, out: Path, address: str | None, **options: Any
) -> SampleOutput | None:
    """`genrun sample --ray`: the samples of `batches` (as `sampler.draw` made
    them from `options`: engine, n, temperature, ...) from Ray actors on the
    Ray at `address` (see `start`): a parquet `out` written as shards (returns
    None), else checked first and written as one process writes them."""
    if batches.policy != NonFinite.ERROR or len(batches.classes or []) > 1:
        raise UserError(
            f"--nonfinite {batches.policy} and --label all are not supported with Ray yet (its "
            "actors refuse non-finite samples); drop --ray, or sample one --label at a "
            "time with the default --nonfinite error"
        )
    label = None if batches.classes is None else batches.classes[0]
    if out.suffix.lower() == PARQUET:
        check_writable(out)
        start(address)
        write_parquet(sample_dataset(**options, label=label), out)
        return None
    output = SampleOutput(out, batches)
    start(address)
    output.write(batches.of_finite(sample_batches(**options, label=label)))
    return output


def cli_scores(
    engine: Path, images: np.ndarray | list[Path], address: str | None, **options: Any
) -> Scores:
    """`genrun likelihood --ray`: the nll bound in bits/dim as Scores (floored
    at 0 on the actors; the count of floored values is not gathered)."""
    start(address)
    values = score(engine, images, **options)
    return Scores("nll", values, 0, options.get("iw_samples"), options.get("seed", 0))


def _in_order(dataset, column: str, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pipeline's rows as (index, column) chunks, checked to come in index
    order 0..n-1; an actor's UserError comes back as itself."""
    expected = 0
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            index = batch["index"]
            if len(index) and (index[0] != expected or np.any(np.diff(index) != 1)):
                raise RuntimeError(f"Ray returned rows out of order at {expected}")
            expected += len(index)
            yield index, batch[column]
    except Exception as err:
        cause: BaseException | None = err
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise UserError(str(cause)) from None
        raise
    if expected != n:
        raise RuntimeError(f"Ray returned {expected} of {n} rows")
