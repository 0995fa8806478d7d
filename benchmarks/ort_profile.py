"""Where ONNX Runtime spends an engine call, and what its session knobs do.

    python benchmarks/ort_profile.py ENGINE.onnx [--batch 256] [--rounds 7]
    python benchmarks/ort_profile.py ENGINE.onnx --only spinning,block --no-profile

1. Profile: ORT's own profiler (SessionOptions.enable_profiling) over a few
   calls with genrun's session settings; kernel time summed per op type.
2. Knobs: one session per setting, all in this process, timed in interleaved
   rounds (every setting once per round, so a shared machine's load changes
   hit all of them alike); each setting's time per call relative to genrun's
   settings in the same round, median over rounds.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from genrun.bench import random_inputs
from genrun.engine import load, session_options

LEVELS = ort.GraphOptimizationLevel


def knobs(threads: int) -> dict[str, dict]:
    """Setting name -> SessionOptions attributes and config entries to apply
    on top of genrun's own (`genrun.engine.session_options`)."""
    return {
        "genrun (ENABLE_ALL, sequential, spinning)": {},
        "1 thread": {"intra_op_num_threads": 1},
        f"{2 * threads} threads": {"intra_op_num_threads": 2 * threads},
        "ORT_ENABLE_BASIC": {"graph_optimization_level": LEVELS.ORT_ENABLE_BASIC},
        "ORT_ENABLE_EXTENDED": {"graph_optimization_level": LEVELS.ORT_ENABLE_EXTENDED},
        "ORT_ENABLE_LAYOUT": {"graph_optimization_level": LEVELS.ORT_ENABLE_LAYOUT},
        "parallel execution": {
            "execution_mode": ort.ExecutionMode.ORT_PARALLEL,
            "inter_op_num_threads": threads,
        },
        "no memory pattern": {"enable_mem_pattern": False},
        "no CPU arena": {"enable_cpu_mem_arena": False},
        "no spinning": {"config": {"session.intra_op.allow_spinning": "0"}},
        "dynamic block base 4": {"config": {"session.dynamic_block_base": "4"}},
        "denormals as zero": {"config": {"session.set_denormal_as_zero": "1"}},
    }


def session(path: Path, threads: int, setting: dict, **extra) -> ort.InferenceSession:
    options = session_options(threads)
    for name, value in {**setting, **extra}.items():
        if name == "config":
            for key, entry in value.items():
                options.add_session_config_entry(key, entry)
        else:
            setattr(options, name, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def profile(path: Path, threads: int, feeds: dict, calls: int) -> list[tuple[str, float, int]]:
    """(op type, ms per call, nodes) by kernel time, largest first."""
    with tempfile.TemporaryDirectory() as tmp:
        options = {"enable_profiling": True, "profile_file_prefix": f"{tmp}/ort"}
        traced = session(path, threads, {}, **options)
        for _ in range(3 + calls):  # the first calls are in the trace too: skip them below
            traced.run(None, feeds)
        events = json.loads(Path(traced.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = collections.defaultdict(list)
    for event in kernels:
        per_run[event["name"]].append(event)
    total: dict[str, float] = collections.Counter()
    nodes: dict[str, set] = collections.defaultdict(set)
    for name, runs in per_run.items():
        op = runs[0]["args"]["op_name"]
        total[op] += sum(e["dur"] for e in runs[-calls:]) / calls / 1000
        nodes[op].add(name)
    return [(op, ms, len(nodes[op])) for op, ms in total.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("engine", type=Path)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per setting and round")
    parser.add_argument("--only", default="", help="comma-separated parts of setting names")
    parser.add_argument("--no-profile", action="store_true", help="time the knobs only")
    args = parser.parse_args()
    engine = load(args.engine, provider="cpu")
    feeds, threads = random_inputs(engine, args.batch), engine.threads

    if not args.no_profile:
        rows = profile(args.engine, threads, feeds, args.calls)
        whole = sum(ms for _, ms, _ in rows)
        print(f"## Profile: {args.engine.name}, batch {args.batch}, {threads} threads")
        print(f"kernel time {whole:.1f} ms per call\n")
        print("| op type | nodes | ms per call | share |\n|---|---|---|---|")
        for op, ms, count in rows:
            print(f"| {op} | {count} | {ms:.2f} | {100 * ms / whole:.1f}% |")

    parts = [part for part in args.only.split(",") if part]
    settings = {
        name: setting
        for i, (name, setting) in enumerate(knobs(threads).items())
        if i == 0 or not parts or any(part in name for part in parts)  # first: the baseline
    }
    sessions = {name: session(args.engine, threads, s) for name, s in settings.items()}
    for each in sessions.values():
        for _ in range(2):
            each.run(None, feeds)
    ratios: dict[str, list[float]] = collections.defaultdict(list)
    base_ms: list[float] = []
    for _ in range(args.rounds):
        times = {}
        for name, each in sessions.items():
            calls = []
            for _ in range(args.calls):
                started = time.perf_counter()
                each.run(None, feeds)
                calls.append(time.perf_counter() - started)
            times[name] = statistics.median(calls)
        baseline = times[next(iter(sessions))]
        base_ms.append(1000 * baseline)
        for name, seconds in times.items():
            ratios[name].append(seconds / baseline)
    print(f"\n## Knobs: time per call relative to genrun's settings ({args.rounds} rounds)")
    print(f"genrun's settings: median {statistics.median(base_ms):.1f} ms per call\n")
    print("| setting | time / genrun's (median) | min - max over rounds |\n|---|---|---|")
    for name, values in ratios.items():
        print(
            f"| {name} | {statistics.median(values):.3f} | {min(values):.2f} - {max(values):.2f} |"
        )


if __name__ == "__main__":
    main()
