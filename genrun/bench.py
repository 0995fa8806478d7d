"""Throughput and latency of one engine at several batch sizes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .errors import UserError
from .manifest import BATCH, TEMPERATURE

WARMUP_CALLS = 3  # first calls allocate and pick kernels; never timed
MIN_CALLS = 5  # enough for a median even when one call takes the whole budget


@dataclass
class BenchRow:
    batch_size: int
    calls: int
    samples_per_s: float  # batch size / the median call's time
    latency_ms: dict[str, float]  # per call: p50, p90, p99


def bench(engine: Engine, batch_sizes: list[int], seconds: float = 2.0) -> list[BenchRow]:
    """Warm up, then call the engine on random inputs of each batch size for
    about `seconds` (at least MIN_CALLS calls); samples/s from the median call
    (a shared machine's stalls move the mean, not the median)."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise UserError(f"batch sizes must be whole numbers >= 1, got {batch_sizes}")
    if not 0 < seconds < math.inf:
        raise UserError(f"seconds must be a finite number > 0, got {seconds}")
    rows = []
    for batch_size in batch_sizes:
        feeds = random_inputs(engine, batch_size)
        rows.append(timed_row(lambda feeds=feeds: engine.run(**feeds), batch_size, seconds))
    return rows


def time_calls(call: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per call of `call()`: WARMUP_CALLS untimed, then at least
    MIN_CALLS and about `seconds` in all. The one timing loop of genrun bench
    and the benchmarks (benchmarks/throughput*.py time every peer with it).
    A call that returns before its work is done (a GPU stream) must
    synchronise itself."""
    for _ in range(WARMUP_CALLS):
        call()
    latencies: list[float] = []
    while len(latencies) < MIN_CALLS or sum(latencies) < seconds:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def timed_row(call: Callable[[], object], batch_size: int, seconds: float) -> BenchRow:
    """`time_calls` as a BenchRow: samples/s from the median call."""
    latencies = time_calls(call, seconds)
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) * 1000
    return BenchRow(
        batch_size=batch_size,
        calls=len(latencies),
        samples_per_s=batch_size / float(np.median(latencies)),
        latency_ms={"p50": p50, "p90": p90, "p99": p99},
    )


def random_inputs(engine: Engine, batch_size: int) -> dict[str, np.ndarray]:
    """Inputs of the engine's shapes (its manifest's, or a foreign graph's own):
    random pixels, standard-normal floats, temperature 0.7; inputs with a
    default are left to it."""
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in engine.inputs:
        if spec.default is not None:
            continue
        shape = [batch_size if size == BATCH else size for size in spec.shape]
        if spec.dtype == "uint8":
            feeds[spec.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        elif spec.name == TEMPERATURE:
            feeds[spec.name] = np.full(shape, 0.7, np.float32)
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(
                spec.dtype, copy=False
            )
    return feeds
