"""Throughput side by side in one process: PyTorch eager, PyTorch eager on
the frozen exported graph, torch.compile and genrun (ONNX Runtime) on the same
models and batch sizes.

    python benchmarks/throughput.py [--seconds 3] [--modes default,max-autotune-no-cudagraphs]
    python benchmarks/throughput.py --tiny   # a smoke run: small models, no file written

Models: the issue's reference Glow (L=2, K=8, 128 hidden, 1x28x28) and the
pytorch/examples MLP VAE (784-400-20); one training step on the shared MNIST
initialises them (speed does not depend on training). "eager" runs gentrain's
model (LU factors recombined per call, ActNorm separate); "frozen" runs the
module that was exported (genexport.graphs.build_graph(model, role).module: W
and W^-1 baked, ActNorm folded), so frozen vs genrun isolates the runtime.
torch.compile is given its best chance, as a peer should be: it compiles the
frozen module (no LU recombination, no ActNorm data-dependent branch, so no
graph break and no recompile), with dynamic=False (one compile per batch
size), in each of --modes; the row reports the fastest mode and names it.
Every cell is timed by genrun.bench.time_calls (genrun bench's own loop:
warm-up, then repeated calls for about --seconds; medians of per-call time).
Also the machine's float32 matrix-multiply peak (torch.mm 2048^3) for scale.
Writes benchmarks/results/throughput-cpu.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from genexport.export import export_checkpoint
from genexport.graphs import build_graph
from genrun import load
from genrun.bench import random_inputs, time_calls
from genrun.flops import count_flops
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


def median_seconds(call: Callable[[], object], seconds: float) -> float:
    return statistics.median(time_calls(call, seconds))


def best_compiled(module, inputs, seconds: float, modes) -> tuple[float, str, float]:
    """(median seconds per call, mode, compile seconds) of the fastest
    torch.compile mode of `module` at these inputs' shapes (dynamic=False)."""
    best = None
    for mode in modes:
        torch._dynamo.reset()  # no cache shared between modes
        label = mode
        try:
            compiled = torch.compile(module, mode=mode, dynamic=False, fullgraph=True)
            started = time.perf_counter()
            compiled(*inputs)
        except Exception:  # a graph break: compile it as torch.compile would by default
            torch._dynamo.reset()
            compiled, label = torch.compile(module, mode=mode, dynamic=False), f"{mode}, breaks"
            started = time.perf_counter()
            compiled(*inputs)
        compile_s = time.perf_counter() - started
        per_call = median_seconds(lambda compiled=compiled: compiled(*inputs), seconds)
        if best is None or per_call < best[0]:
            best = (per_call, label, compile_s)
    return best


def matmul_peak_gflops(seconds: float) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_seconds(lambda: torch.mm(a, b), seconds) / 1e9


def trained_engines(workdir: Path, data, tiny: bool, device: str = "cpu") -> dict[str, tuple]:
    """family -> (model, {role: engine path}) after 100 training steps each (a
    model fresh from its init can sample values so large that parity fails)."""
    out = {}
    torch.manual_seed(0)  # a fixed init: some draws sample overflowing images at T near 1
    models = {
        "glow": Glow(
            GlowConfig(data.shape, levels=2, depth=2 if tiny else 8, hidden=16 if tiny else 128)
        ),
        "vae": VAE(VAEConfig(data.shape, arch="mlp", hidden=32 if tiny else 400, latent_dim=20)),
    }
    for family, model in models.items():
        steps = 4 if tiny else 100
        warmup = 1 if tiny else 20
        config = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup=warmup, device=device)
        Trainer(model, data, config, workdir / family).fit()
        checkpoint = workdir / family / "checkpoint.pt"
        engines = export_checkpoint(checkpoint, out=workdir, name=family)
        trained = model_from_checkpoint(load_checkpoint(checkpoint))
        out[family] = (trained, {e.graph.role: e.path for e in engines})
    return out


def measure(model, role: str, path: Path, batch: int, args) -> tuple[float, ...]:
    """(eager, frozen, compiled, compile mode, compile seconds, genrun):
    samples/s of one graph."""
    graph = build_graph(model, role)
    inputs = graph.sample_inputs(batch, torch.Generator().manual_seed(0))
    eager = graph.reference.eval()
    frozen = graph.module.eval()  # the very graph genrun runs, in PyTorch
    engine = load(path, provider="cpu")
    feeds = random_inputs(engine, batch)
    with torch.inference_mode():
        t_eager = median_seconds(lambda: eager(*inputs), args.seconds)
        t_frozen = median_seconds(lambda: frozen(*inputs), args.seconds)
        t_compiled, mode, compile_s = best_compiled(frozen, inputs, args.seconds, args.modes)
    t_ort = median_seconds(lambda: engine.run(**feeds), args.seconds)
    return (
        batch / t_eager,
        batch / t_frozen,
        batch / t_compiled,
        mode,
        compile_s,
        batch / t_ort,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data", default=f"mnist:{Path(__file__).resolve().parents[1] / 'tests/data/mnist-mini'}"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--modes",
        default=",".join(COMPILE_MODES),
        help="torch.compile modes tried per row (the fastest is reported)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: small models, batch <= 4, no file"
    )
    args = parser.parse_args()
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    data = load_data(args.data)
    peak = matmul_peak_gflops(args.seconds)
    rows = []
    cases = [(f, r, min(b, 4)) for f, r, b in CASES] if args.tiny else CASES
    with tempfile.TemporaryDirectory() as tmp:
        engines = trained_engines(Path(tmp), data, args.tiny)
        for family, role, batch in cases:
            model, paths = engines[family]
            flops = count_flops(paths[role])
            rows.append(
                (f"{family} {role}", batch, flops, *measure(model, role, paths[role], batch, args))
            )
            print(rows[-1], flush=True)
    lines = [
        "# Throughput on CPU: PyTorch eager vs torch.compile vs genrun (ONNX Runtime)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); float32 torch.mm "
        f"2048^3 peak {peak:.0f} GFLOP/s. Medians of per-call time over about "
        f"{args.seconds:g} s per cell after warm-up (genrun.bench.time_calls); samples/s = "
        "batch / median. torch.compile: the frozen module, dynamic=False, the fastest of "
        f"modes {', '.join(args.modes)} (named per row).",
        "",
        "| graph | batch | eager samples/s | frozen eager samples/s "
        "| torch.compile samples/s (mode; compile s) | genrun samples/s | genrun GFLOP/s "
        "(% peak) | genrun / frozen | genrun / compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, flops, eager, frozen, compiled, mode, compile_s, ort in rows:
        gflops = flops * ort / 1e9  # genrun.flops: 2 x MACs of Conv/ConvTranspose/MatMul/Gemm
        lines.append(
            f"| {name} | {batch} | {eager:,.0f} | {frozen:,.0f} | {compiled:,.0f} "
            f"({mode}; {compile_s:.0f}) | {ort:,.0f} | {gflops:.0f} ({100 * gflops / peak:.0f}%) "
            f"| {ort / frozen:.2f}x | {ort / compiled:.2f}x |"
        )
    lines += [
        "",
        "Targets (issue 4): genrun at batch 256 >= 80% of the matmul peak and >= 1.5x "
        "torch.compile; at batch 1 >= 3x torch.compile. GFLOP/s from the graph's "
        "counted FLOPs (genrun.flops).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.tiny:
        return
    RESULTS.mkdir(exist_ok=True)
    results = RESULTS / "throughput-cpu.md"
    # The Profile section (benchmarks/ort_profile.py, written by hand) outlives reruns.
    old = results.read_text() if results.exists() else ""
    kept = old[old.index("\n## Profile") :] if "\n## Profile" in old else ""
    results.write_text(text + kept)


if __name__ == "__main__":
    main()
