"""Throughput side by side in one process: PyTorch eager, PyTorch eager on
the frozen exported graph, torch.compile and genrun (ONNX Runtime) on the same
models and batch sizes.

    python benchmarks/throughput.py [--seconds 3]
    python benchmarks/throughput.py --tiny   # a smoke run: small models, no file written

Models: the issue's reference Glow (L=2, K=8, 128 hidden, 1x28x28) and the
pytorch/examples MLP VAE (784-400-20); one training step on the shared MNIST
initialises them (speed does not depend on training). "eager" runs gentrain's
model (LU factors recombined per call, ActNorm separate); "frozen" runs the
module that was exported (genexport.graphs.build_graph(model, role).module: W
and W^-1 baked, ActNorm folded), so frozen vs genrun isolates the runtime.
Each row: warm-up, then
repeated calls for about --seconds; medians of per-call time. Also the
machine's float32 matrix-multiply peak (torch.mm 2048^3) for scale. Writes
benchmarks/results/throughput-cpu.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from genexport.engines import export_checkpoint
from genexport.graphs import build_graph
from genrun import load
from genrun.bench import random_inputs
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


def median_seconds(call, seconds: float) -> float:
    for _ in range(3):
        call()
    times: list[float] = []
    while len(times) < 5 or sum(times) < seconds:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak_gflops(seconds: float) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_seconds(lambda: torch.mm(a, b), seconds) / 1e9


def trained_engines(workdir: Path, data, tiny: bool) -> dict[str, tuple]:
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
        config = TrainConfig(steps=steps, batch_size=64, lr=2e-3, warmup=warmup, device="cpu")
        Trainer(model, data, config, workdir / family).fit()
        checkpoint = workdir / family / "checkpoint.pt"
        engines = export_checkpoint(checkpoint, out=workdir, name=family)
        trained = model_from_checkpoint(load_checkpoint(checkpoint))
        out[family] = (trained, {e.graph.role: e.path for e in engines})
    return out


def measure(model, role: str, path: Path, batch: int, args) -> tuple[float, ...]:
    """(eager, frozen, compiled, compile seconds, genrun): samples/s of one graph."""
    graph = build_graph(model, role)
    inputs = graph.sample_inputs(batch, torch.Generator().manual_seed(0))
    eager = graph.reference.eval()
    frozen = graph.module.eval()  # the very graph genrun runs, in PyTorch
    compiled = torch.compile(eager)
    engine = load(path, provider="cpu")
    feeds = random_inputs(engine, batch)
    with torch.inference_mode():
        t_eager = median_seconds(lambda: eager(*inputs), args.seconds)
        t_frozen = median_seconds(lambda: frozen(*inputs), args.seconds)
        started = time.perf_counter()
        compiled(*inputs)
        compile_s = time.perf_counter() - started
        t_compiled = median_seconds(lambda: compiled(*inputs), args.seconds)
    t_ort = median_seconds(lambda: engine.run(**feeds), args.seconds)
    return batch / t_eager, batch / t_frozen, batch / t_compiled, compile_s, batch / t_ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="mnist:../shared/data/mnist")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: small models, batch <= 4, no file"
    )
    args = parser.parse_args()
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
        f"{args.seconds:.0f} s per cell after warm-up; samples/s = batch / median.",
        "",
        "| graph | batch | eager samples/s | frozen eager samples/s "
        "| torch.compile samples/s (compile s) | genrun samples/s | genrun GFLOP/s "
        "(% peak) | genrun / frozen | genrun / compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, batch, flops, eager, frozen, compiled, compile_s, ort in rows:
        gflops = flops * ort / 1e9  # genrun.flops: 2 x MACs of Conv/ConvTranspose/MatMul/Gemm
        lines.append(
            f"| {name} | {batch} | {eager:,.0f} | {frozen:,.0f} | {compiled:,.0f} "
            f"({compile_s:.0f}) | {ort:,.0f} | {gflops:.0f} ({100 * gflops / peak:.0f}%) "
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
