"""genrun.bench.time_calls, the one timing loop of genrun bench and the
benchmarks: its budget and its clock (wall or the process's CPU time)."""

from __future__ import annotations

import itertools
import time

from genrun.bench import WARMUP_CALLS, time_calls


def test_time_calls_reads_the_clock_it_is_given_and_stops_at_the_budget() -> None:
    ticks = itertools.count()  # a clock that advances one second per reading
    calls = []
    latencies = time_calls(lambda: calls.append(1), seconds=5, clock=lambda: float(next(ticks)))
    assert latencies == [1.0] * 5
    assert len(calls) == WARMUP_CALLS + 5


def test_cpu_time_does_not_count_waiting() -> None:
    # A call that sleeps takes wall time but almost no CPU time: what makes
    # `--clock cpu` a quiet core's figure on a shared machine.
    wall = time_calls(lambda: time.sleep(0.02), seconds=0.01)
    cpu = time_calls(lambda: time.sleep(0.02), seconds=0.001, clock=time.process_time)
    assert min(wall) >= 0.02
    assert max(cpu) < 0.01
