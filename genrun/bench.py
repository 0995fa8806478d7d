"""Throughput and latency of one engine at several batch sizes."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .compare import random_feeds
from .describe import precision_plan_text
from .engine import Engine
from .errors import UserError
from .flops import COUNTED_OPS, count_flops, matmul_peak_gflops

WARMUP_CALLS = 3  # first calls allocate and pick kernels; never timed (fewer if slow)
PROBE_BATCH = 16  # rows of the call whose memory growth sizes the larger batches
# Share of the memory available now (MemAvailable) that one batch may take:
# inputs, outputs and ONNX Runtime's activations together.
MEMORY_SHARE = 0.5


@dataclass
class BenchRow:
    batch_size: int
    calls: int
    samples_per_s: float  # batch size / the median call's time
    latency_ms: dict[str, float]  # per call: p50, p90, p99


def bench(engine: Engine, batch_sizes: list[int], seconds: float = 2.0) -> list[BenchRow]:
    """Warm up, then call the engine on random inputs of each batch size for
    about `seconds` (see `time_calls`); samples/s from the median call (a
    shared machine's stalls move the mean, not the median). A batch size too
    large for the memory available is refused first (`check_memory`)."""
    if not batch_sizes or min(batch_sizes) < 1:
        raise UserError(f"batch sizes must be whole numbers >= 1, got {batch_sizes}")
    if not 0 < seconds < math.inf:
        raise UserError(f"seconds must be a finite number > 0, got {seconds}")
    check_memory(engine, max(batch_sizes))
    rows = []
    for batch_size in batch_sizes:
        feeds = random_inputs(engine, batch_size)
        rows.append(timed_row(lambda feeds=feeds: engine.run(**feeds), batch_size, seconds))
    return rows


def time_calls(
    call: Callable[[], object], seconds: float, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Seconds per call of `call()`: up to WARMUP_CALLS untimed, then timed
    calls until they add up to `seconds` (at least one). Both stop at the
    budget, so a call slower than `seconds` is made twice, not eight times.
    The one timing loop of genrun bench and the benchmarks
    (benchmarks/throughput*.py time every peer with it). A call that returns
    before its work is done (a GPU stream) must synchronise itself. `clock`:
    wall time by default; `time.process_time` (CPU time of every thread of
    the process) measures a one-thread run on a shared machine as a quiet
    core would run it, since time spent waiting for the core is not counted."""
    started = clock()
    for _ in range(WARMUP_CALLS):
        call()
        if clock() - started > seconds:
            break
    latencies: list[float] = []
    while not latencies or sum(latencies) < seconds:
        started = clock()
        call()
        latencies.append(clock() - started)
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


def check_memory(engine: Engine, batch_size: int, available: int | None = None) -> None:
    """Refuse a batch size whose call would take more than MEMORY_SHARE of the
    memory available, measured, not guessed: after a call at one row, one call
    at PROBE_BATCH rows, and the growth of this process's resident memory per
    row (an overestimate: what is left of fixed costs counts as per-row; at
    least the row's inputs and outputs). Linux only; elsewhere not checked."""
    available = _available_bytes() if available is None else available
    if available is None or batch_size <= PROBE_BATCH:
        return
    engine.run(**random_inputs(engine, 1))  # one-off costs: sessions warm up, arenas start
    feeds = random_inputs(engine, PROBE_BATCH)
    before = _resident_bytes()
    outputs = sum(v.nbytes for v in engine.run(**feeds).values())  # what each call returns
    grown = max(_resident_bytes() - before, 0)
    per_row = max(grown, outputs + sum(v.nbytes for v in feeds.values())) / PROBE_BATCH
    allowed = int(MEMORY_SHARE * available / per_row)
    if batch_size > allowed:
        raise UserError(
            f"--batch {batch_size} would take about {per_row * batch_size / 2**30:.1f} GiB "
            f"({per_row / 2**20:.2f} MiB per row, measured at batch {PROBE_BATCH}), more than "
            f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available; use --batch "
            f"{allowed} or less"
        )


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def random_inputs(engine: Engine, batch_size: int) -> dict[str, np.ndarray]:
    """Inputs of the engine's shapes (its manifest's, or a foreign graph's own):
    random pixels, standard-normal floats, temperature 0.7; inputs with a
    default are left to it (genrun.compare.random_feeds, seed 0)."""
    return random_feeds(engine.inputs, batch_size, seed=0)


def bench_table(engine: Engine, rows: list[BenchRow]) -> list[str]:
    """`genrun bench`'s report: what ran where, the FLOPs per sample and the
    matmul peak of the engine's precision (on the CPU, the same threads),
    then one line per batch size."""
    try:
        if engine.onnx_path is None:  # a plan whose source ONNX is not beside it
            raise ValueError(f"{engine.plan.onnx_file} is not beside the plan")
        flops: int | None = count_flops(engine.onnx_path)
        cost = f"{flops / 1e6:.4g} MFLOP per sample (2 x MACs of {', '.join(COUNTED_OPS)})"
    except ImportError:  # the base install has no `onnx` to read the graph with
        flops, cost = None, "FLOPs not counted (needs onnx: pip install 'vaeflow[export]')"
    except ValueError as err:  # shapes onnx cannot infer
        flops, cost = None, f"FLOPs not counted ({err})"
    # The share of peak compares like with like only on the CPU, and with the
    # matmul of the engine's precision (bf16 engines: OpenVINO's bf16 MatMul).
    manifest = engine.manifest
    reduced = engine.backend == "openvino"  # bf16 engines run there
    peak_name = "OpenVINO bfloat16" if reduced else "numpy float32"
    if engine.provider != "cpu":
        peak = None
    elif reduced:
        from .backends.openvino import bf16_matmul_peak_gflops

        peak = bf16_matmul_peak_gflops(engine.threads)
    else:
        peak = matmul_peak_gflops(engine.threads)
    what = (
        f"{engine.path.name} (no vaeflow manifest)"
        if manifest is None
        else f"{manifest.family} {manifest.role} ({manifest.precision})"
    )
    runtime = " (openvino)" if reduced else ""
    lines = [f"{what} on {engine.provider}{runtime}, {engine.threads} threads"]
    plan = None if manifest is None else manifest.precision_plan
    if plan is not None:
        lines.append(f"precision bf16: {precision_plan_text(plan)}")
    lines.append(
        cost
        + ("" if peak is None else f"; {peak_name} matmul peak {peak:.1f} GFLOP/s, same threads")
    )
    lines.append(
        f"{'batch':>6} {'calls':>6} {'samples/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'GFLOP/s':>8} {'% peak':>7}"
    )
    for row in rows:
        ms = row.latency_ms
        gflops = None if flops is None else flops * row.samples_per_s / 1e9
        lines.append(
            f"{row.batch_size:>6} {row.calls:>6} {row.samples_per_s:>10.1f} "
            f"{ms['p50']:>9.3f} {ms['p90']:>9.3f} {ms['p99']:>9.3f} "
            f"{'-' if gflops is None else f'{gflops:.2f}':>8} "
            f"{'-' if gflops is None or peak is None else f'{100 * gflops / peak:.1f}':>7}"
        )
    return lines
