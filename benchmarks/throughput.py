"""Throughput on the CPU, genrun against the peers a user would pick, side by
side in one process, in interleaved rounds.

    python benchmarks/throughput.py                      # writes results/throughput-cpu.md
    python benchmarks/throughput.py --glow-ckpt runs/glow/checkpoint.pt --vae-ckpt ...
    python benchmarks/throughput.py --tiny               # smoke run, no file written

Columns (each a samples/s, median over the rounds; a peer that is not
installed is a column saying so):
- genrun fp32: the ONNX engine on ONNX Runtime (what `genrun` runs).
- genrun bf16: `genexport onnx --precision bf16` on OpenVINO, or why the
  export refused (its user-terms parity, genexport/precision.py).
- torch eager: gentrain's model as trained.
- torch.compile: the frozen module that was exported (no LU recombination, no
  ActNorm branch), dynamic=False, the fastest of --modes.
- torch.compile bf16: the same under torch.autocast("cpu", bfloat16).
- OpenVINO fp32 / bf16: the genrun fp32 ONNX file compiled with
  INFERENCE_PRECISION_HINT f32 / bf16 (OpenVINO's default on AMX CPUs is bf16).
The bf16 columns also get their parity in the user's terms against genrun
fp32 on the same seeded inputs: for generate/decode the share of uint8
pixels within one level at T = 0.7 and 1.0 (the export's bound: >= 99.9%),
for density the largest bits/dim difference (bound 0.01).

Timing: every column of a row is called in turn, `--rounds` times, each turn
about --seconds / --rounds of calls (genrun.bench.time_calls: warm-up, then
the median call), so a load that comes and goes hits every column alike;
the ratios are per round, then the median. Models: the gentrain-default Glow
(L=2, K=8, 64 hidden) and the pytorch/examples MLP VAE (784-400-20), trained
--steps steps on MNIST unless checkpoints are given. Also the machine's CPU
flags and its float32 (numpy, torch) and bfloat16 (OpenVINO) matmul peaks.
A full run takes about 15-25 minutes on an idle 2-core machine.

On a shared machine: `--threads 1 --clock cpu` gives every runtime one
thread (the process is pinned to one CPU) and times calls by the process's
CPU time, which does not count the time other processes held the core, so
the table is what a quiet core gives.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from genexport.export import export_checkpoint
from genexport.graphs import build_graph
from genrun import load
from genrun.backends.openvino import REPORTED_FLAGS, bf16_support, cpu_flags
from genrun.bench import random_inputs, time_calls
from genrun.engine import default_threads
from genrun.errors import UserError
from genrun.flops import count_flops, matmul_peak_gflops
from genrun.readers import load_data
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.models import VAE, Glow, GlowConfig, VAEConfig
from gentrain.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"
CASES = [
    ("glow", "generate", 1),
    ("glow", "generate", 256),
    ("glow", "density", 256),
    ("vae", "decode", 1),
    ("vae", "decode", 1024),
]
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set by --clock before anything is timed
COLUMNS = (
    "genrun fp32",
    "genrun bf16",
    "torch eager",
    "torch.compile",
    "torch.compile bf16",
    "OpenVINO fp32",
    "OpenVINO bf16",
)
PARITY_SAMPLES = 256


def openvino_version() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


def trained(workdir: Path, data, args) -> dict[str, Path]:
    """family -> checkpoint: given, or trained --steps steps here."""
    given = {"glow": args.glow_ckpt, "vae": args.vae_ckpt}
    out = {}
    for family, model in (
        ("glow", lambda: Glow(GlowConfig(data.shape, hidden=16 if args.tiny else 64))),
        ("vae", lambda: VAE(VAEConfig(data.shape, arch="mlp", hidden=400, latent_dim=20))),
    ):
        if given[family]:
            out[family] = Path(given[family])
            continue
        torch.manual_seed(0)
        steps = 4 if args.tiny else args.steps
        config = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup=min(20, steps))
        Trainer(model(), data, config, workdir / family).fit()
        out[family] = workdir / family / "checkpoint.pt"
    return out


def engines(checkpoint: Path, workdir: Path, family: str, data: str | None) -> dict:
    """(role, precision) -> engine path, or the reason a bf16 export refused."""
    paths: dict = {}
    for engine in export_checkpoint(checkpoint, workdir, name=family, data=data):
        paths[engine.graph.role, "fp32"] = engine.path
    for role in {role for role, _ in paths}:
        try:
            (engine,) = export_checkpoint(
                checkpoint, workdir, role, precision="bf16", name=family, data=data
            )
            paths[role, "bf16"] = engine.path
        except UserError as err:
            paths[role, "bf16"] = str(err)
        print(f"{family} {role} bf16: {paths[role, 'bf16']}", flush=True)
    return paths


def compiled_best(module, inputs, modes, seconds: float) -> tuple[Callable, str]:
    """The fastest torch.compile mode of `module` at these shapes (dynamic=False)."""
    best = None
    for mode in modes:
        torch._dynamo.reset()
        try:
            compiled = torch.compile(module, mode=mode, dynamic=False, fullgraph=True)
            compiled(*inputs)
            label = mode
        except Exception:  # a graph break: as torch.compile would run it by default
            torch._dynamo.reset()
            compiled, label = torch.compile(module, mode=mode, dynamic=False), f"{mode}, breaks"
            compiled(*inputs)
        per_call = statistics.median(time_calls(lambda c=compiled: c(*inputs), seconds, clock))
        if best is None or per_call < best[0]:
            best = (per_call, compiled, label)
    return best[1], best[2]


class Autocast(torch.nn.Module):
    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(*args)


def openvino_call(path: Path, hint: str, feeds: dict) -> Callable:
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(path),
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": default_threads(),
            "PERFORMANCE_HINT": "LATENCY",
        },
    )
    request = compiled.create_infer_request()
    ports = {name: port for port in compiled.inputs for name in port.get_names()}
    fed = {ports[name]: value for name, value in feeds.items() if name in ports}

    def call():
        results = request.infer(fed)
        return {name: results[port] for port in compiled.outputs for name in port.get_names()}

    return call


def columns(model, role: str, paths: dict, batch: int, args) -> tuple[dict, dict, dict]:
    """(column -> call or why not, column -> note, bf16 column -> parity call)."""
    graph = build_graph(model, role)
    inputs = graph.sample_inputs(batch, torch.Generator().manual_seed(0))
    fp32 = load(paths[role, "fp32"], provider="cpu")
    feeds = random_inputs(fp32, batch)
    calls: dict = {"genrun fp32": lambda: fp32.run(**feeds)}
    notes: dict = {}
    bf16 = paths.get((role, "bf16"))
    if isinstance(bf16, Path):
        reduced = load(bf16)
        calls["genrun bf16"] = lambda: reduced.run(**feeds)
        plan = reduced.manifest.precision_plan
        notes["genrun bf16"] = f"{plan.reduced_flop_share:.0%} of FLOPs in bf16"
    else:
        calls["genrun bf16"] = "refused: " + _short(bf16 or "not exported")
    eager, frozen = graph.reference.eval(), graph.module.eval()
    calls["torch eager"] = lambda: eager(*inputs)
    fast, mode = compiled_best(frozen, inputs, args.modes, args.seconds / args.rounds)
    calls["torch.compile"], notes["torch.compile"] = (lambda: fast(*inputs)), mode
    low, low_mode = compiled_best(Autocast(frozen), inputs, args.modes, args.seconds / args.rounds)
    calls["torch.compile bf16"], notes["torch.compile bf16"] = (lambda: low(*inputs)), low_mode
    version = openvino_version()
    for hint, column in (("f32", "OpenVINO fp32"), ("bf16", "OpenVINO bf16")):
        calls[column] = (
            openvino_call(paths[role, "fp32"], hint, feeds) if version else "not installed"
        )
    return calls, notes, {"torch.compile bf16": low, "OpenVINO bf16": calls["OpenVINO bf16"]}


def _short(reason: str) -> str:
    if "parity cannot be met" in reason:
        return "parity"
    if "meets parity but runs at" in reason:  # the export's speed check
        return "slower than fp32 (" + reason.split("runs at ")[1].split("x ")[0] + "x)"
    return reason.split(":")[0]


def measure(calls: dict, args) -> dict[str, tuple[float, float]]:
    """column -> (median seconds per call, median of genrun fp32 time / its time)."""
    timed = {name: call for name, call in calls.items() if callable(call)}
    seconds: dict[str, list[float]] = {name: [] for name in timed}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, call in timed.items():
                seconds[name].append(
                    statistics.median(time_calls(call, args.seconds / args.rounds, clock))
                )
    base = seconds["genrun fp32"]
    return {
        name: (
            statistics.median(times),
            statistics.median(b / t for b, t in zip(base, times, strict=True)),
        )
        for name, times in seconds.items()
    }


def parity(model, role: str, paths: dict, peers: dict) -> dict[str, str]:
    """bf16 column -> its user-terms figure against genrun fp32."""
    graph = build_graph(model, role)
    fp32 = load(paths[role, "fp32"], provider="cpu")
    runs: dict[str, Callable] = {}
    if isinstance(paths.get((role, "bf16")), Path):
        reduced = load(paths[role, "bf16"])
        runs["genrun bf16"] = lambda feeds, inputs: reduced.run(**feeds)
    low = peers["torch.compile bf16"]
    runs["torch.compile bf16"] = lambda feeds, inputs: _named(graph, low(*inputs))
    if callable(peers["OpenVINO bf16"]):
        path = paths[role, "fp32"]
        runs["OpenVINO bf16"] = lambda feeds, inputs: openvino_call(path, "bf16", feeds)()
    figures = {}
    for name, run in runs.items():
        worst = []
        for t in (0.7, 1.0) if role != "density" else (None,):
            feeds, inputs = _parity_inputs(graph, fp32, t)
            want = fp32.run(**feeds)
            with torch.inference_mode():
                got = run(feeds, inputs)
            if role == "density":
                error = np.abs(np.asarray(got["bits_per_dim"], np.float64) - want["bits_per_dim"])
                worst.append(f"max bits/dim difference {np.nanmax(error):.3g}")
            else:
                off = np.abs(np.asarray(got["pixels"]).astype(int) - want["pixels"].astype(int))
                worst.append(f"T={t:g}: {100 * (off <= 1).mean():.2f}% (max {off.max()})")
        figures[name] = "; ".join(worst)
    return figures


def _named(graph, outputs) -> dict[str, np.ndarray]:
    leaves = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    flat = []
    for leaf in leaves:
        flat += list(leaf) if isinstance(leaf, (tuple, list)) else [leaf]
    return {
        spec.name: t.float().numpy() if t.is_floating_point() else t.numpy()
        for spec, t in zip(graph.outputs, flat, strict=False)
    }


def _parity_inputs(graph, engine, t: float | None) -> tuple[dict, tuple]:
    """The same seeded inputs for the engine (numpy feeds) and torch (tensors)."""
    inputs = graph.sample_inputs(PARITY_SAMPLES, torch.Generator().manual_seed(7))
    leaves = [leaf for group in inputs for leaf in (group if isinstance(group, list) else [group])]
    specs = graph.inputs
    if t is not None:
        for i, spec in enumerate(specs):
            if spec.name == "temperature":
                leaves[i] = torch.full_like(leaves[i], t)
            elif spec.name == "z":
                leaves[i] = leaves[i] * t
    feeds = {spec.name: leaf.numpy() for spec, leaf in zip(specs, leaves, strict=True)}
    rebuilt, k = [], 0
    for group in inputs:
        if isinstance(group, list):
            rebuilt.append(leaves[k : k + len(group)])
            k += len(group)
        else:
            rebuilt.append(leaves[k])
            k += 1
    return {n: v for n, v in feeds.items() if n in {s.name for s in engine.inputs}}, tuple(rebuilt)


def peaks(threads: int, seconds: float) -> dict[str, float]:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)

    def rate(call: Callable) -> float:
        return 2 * 2048**3 / statistics.median(time_calls(call, seconds, clock)) / 1e9

    torch_fp32 = rate(lambda: torch.mm(a, b))
    al, bl = a.bfloat16(), b.bfloat16()
    torch_bf16 = rate(lambda: torch.mm(al, bl))
    found = {
        "numpy float32": matmul_peak_gflops(threads, clock=clock),
        "torch float32": torch_fp32,
        "torch bfloat16": torch_bf16,
    }
    if openvino_version() and bf16_support() is None:
        from genrun.backends.openvino import bf16_matmul_peak_gflops

        found["OpenVINO bfloat16"] = bf16_matmul_peak_gflops(threads, clock=clock)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", default=f"mnist:{Path(__file__).resolve().parents[1] / 'tests/data/mnist-mini'}"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per cell")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="training steps (no checkpoints)")
    parser.add_argument("--glow-ckpt")
    parser.add_argument("--vae-ckpt")
    parser.add_argument("--modes", default=",".join(COMPILE_MODES))
    parser.add_argument("--tiny", action="store_true", help="smoke run: small models, no file")
    parser.add_argument(
        "--threads", type=int, help="threads of every runtime (default: every CPU of this process)"
    )
    parser.add_argument(
        "--clock", choices=CLOCKS, default="wall", help="cpu: process CPU time (needs --threads 1)"
    )
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts the CPU time of every thread: use it with --threads 1")
    if args.threads:  # genrun and OpenVINO take their thread count from the affinity mask
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    global clock
    clock = CLOCKS[args.clock]
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if args.tiny:
        args.seconds, args.rounds = 0.4, 2
    started = time.perf_counter()
    data = load_data(args.data)
    threads = default_threads()
    torch.set_num_threads(threads)
    found_peaks = peaks(threads, 2.0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoints = trained(workdir, data, args)
        paths = {f: engines(c, workdir, f, args.data) for f, c in checkpoints.items()}
        for family, role, batch in CASES:
            batch = min(batch, 4) if args.tiny else batch
            model = model_from_checkpoint(load_checkpoint(checkpoints[family]))
            calls, notes, peers = columns(model, role, paths[family], batch, args)
            timed = measure(calls, args)
            figures = parity(model, role, paths[family], peers) if batch > 1 else {}
            flops = count_flops(paths[family][role, "fp32"])
            rows.append((family, role, batch, flops, calls, notes, timed, figures))
            print(family, role, batch, {k: f"{batch / v[0]:.0f}/s" for k, v in timed.items()})
    text = report(rows, found_peaks, threads, args, time.perf_counter() - started)
    print(text)
    if args.tiny:
        return
    results = RESULTS / "throughput-cpu.md"
    # The Profile section (benchmarks/ort_profile.py, written by hand) outlives reruns.
    old = results.read_text() if results.exists() else ""
    kept = old[old.index("\n## Profile") :] if "\n## Profile" in old else ""
    results.write_text(text + kept)


def report(rows, found_peaks, threads, args, wall) -> str:
    flags = cpu_flags()
    shown = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in REPORTED_FLAGS)
    load_now = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Throughput on CPU: genrun (fp32, bf16) against the peers",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"({threads} threads for every runtime), load average {load_now:.1f} at the end. CPU "
        f"flags: {shown}. Matrix-multiply peaks, 2048^3: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in found_peaks.items())
        + f". torch {torch.__version__}, OpenVINO {openvino_version() or 'not installed'}. "
        f"`python benchmarks/throughput.py` ({wall / 60:.0f} min): {args.rounds} interleaved "
        f"rounds, {args.seconds / args.rounds:g} s of calls per cell per round, medians; "
        + (
            "times are the process's CPU time (`--threads 1 --clock cpu`: what a quiet core "
            "gives on a shared machine)."
            if args.clock == "cpu"
            else "wall-clock times."
        ),
        "",
        "samples/s (and genrun fp32's time / the column's, median of the per-round ratios):",
        "",
        "| graph | batch | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for family, role, batch, _, calls, notes, timed, _ in rows:
        cells = []
        for column in COLUMNS:
            if column not in timed:
                cells.append(str(calls.get(column, "-")))
                continue
            seconds, ratio = timed[column]
            note = f"; {notes[column]}" if column in notes else ""
            cells.append(f"{batch / seconds:,.0f} ({ratio:.2f}x{note})")
        lines.append(f"| {family} {role} | {batch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "GFLOP/s of genrun (counted FLOPs, genrun.flops) and its share of the matching peak:",
        "",
        "| graph | batch | MFLOP/sample | genrun fp32 GFLOP/s (% numpy fp32 peak) "
        "| genrun bf16 GFLOP/s (% OpenVINO bf16 peak) |",
        "|---|---|---|---|---|",
    ]
    fp32_peak = found_peaks["numpy float32"]
    bf16_peak = found_peaks.get("OpenVINO bfloat16")
    for family, role, batch, flops, _, _, timed, _ in rows:
        cells = []
        for column, peak in (("genrun fp32", fp32_peak), ("genrun bf16", bf16_peak)):
            if column not in timed:
                cells.append("-")
                continue
            gflops = flops * batch / timed[column][0] / 1e9
            share = f" ({100 * gflops / peak:.0f}%)" if peak else ""
            cells.append(f"{gflops:.0f}{share}")
        lines.append(
            f"| {family} {role} | {batch} | {flops / 1e6:.2f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Parity of the bf16 columns against genrun fp32 ({PARITY_SAMPLES} seeded samples; "
        "pixels within one uint8 level, the export's bound being >= 99.9% at T = 0.7 and 1.0; "
        "density: largest bits/dim difference, bound 0.01):",
        "",
        "| graph | batch | " + " | ".join(c for c in COLUMNS if "bf16" in c) + " |",
        "|---|---|---|---|---|",
    ]
    for family, role, batch, _, calls, _, _, figures in rows:
        if not figures:
            continue
        cells = [
            figures.get(c, str(calls.get(c)) if not callable(calls.get(c)) else "-")
            for c in COLUMNS
            if "bf16" in c
        ]
        lines.append(f"| {family} {role} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
