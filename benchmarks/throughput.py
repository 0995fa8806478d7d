"""Throughput side by side in one process: PyTorch eager, torch.compile and
genrun (ONNX Runtime) on the same models and batch sizes.

    python benchmarks/throughput.py [--seconds 3]

Models: the issue's reference Glow (L=2, K=8, 128 hidden, 1x28x28) and the
pytorch/examples MLP VAE (784-400-20); one training step on the shared MNIST
initialises them (speed does not depend on training). Each row: warm-up, then
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


def trained_engines(workdir: Path, data) -> dict[str, tuple]:
    """family -> (model, {role: engine path}) after 100 training steps each (a
    model fresh from its init can sample values so large that parity fails)."""
    out = {}
    models = {
        "glow": Glow(GlowConfig(data.shape, levels=2, depth=8, hidden=128)),
        "vae": VAE(VAEConfig(data.shape, arch="mlp", hidden=400, latent_dim=20)),
    }
    for family, model in models.items():
        config = TrainConfig(steps=100, batch_size=64, lr=2e-3, warmup=20, device="cpu")
        Trainer(model, data, config, workdir / family).fit()
        checkpoint = workdir / family / "checkpoint.pt"
        engines = export_checkpoint(checkpoint, out=workdir, name=family)
        trained = model_from_checkpoint(load_checkpoint(checkpoint))
        out[family] = (trained, {e.graph.role: e.path for e in engines})
    return out


def measure(model, role: str, path: Path, batch: int, args) -> tuple[float, float, float, float]:
    """(eager, compiled, compile seconds, genrun): samples/s of one graph."""
    graph = build_graph(model, role)
    inputs = graph.sample_inputs(batch, torch.Generator().manual_seed(0))
    eager = graph.reference.eval()
    compiled = torch.compile(eager)
    engine = load(path, provider="cpu")
    feeds = random_inputs(engine, batch)
    with torch.inference_mode():
        t_eager = median_seconds(lambda: eager(*inputs), args.seconds)
        started = time.perf_counter()
        compiled(*inputs)
        compile_s = time.perf_counter() - started
        t_compiled = median_seconds(lambda: compiled(*inputs), args.seconds)
    t_ort = median_seconds(lambda: engine.run(**feeds), args.seconds)
    return batch / t_eager, batch / t_compiled, compile_s, batch / t_ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="mnist:../shared/data/mnist")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    data = load_data(args.data)
    peak = matmul_peak_gflops(args.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engines = trained_engines(Path(tmp), data)
        for family, role, batch in CASES:
            model, paths = engines[family]
            rows.append(
                (f"{family} {role}", batch, *measure(model, role, paths[role], batch, args))
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
        "| graph | batch | eager samples/s | torch.compile samples/s (compile s) "
        "| genrun samples/s | genrun / compile |",
        "|---|---|---|---|---|---|",
    ]
    for name, batch, eager, compiled, compile_s, ort in rows:
        lines.append(
            f"| {name} | {batch} | {eager:,.0f} | {compiled:,.0f} ({compile_s:.0f}) | "
            f"{ort:,.0f} | {ort / compiled:.2f}x |"
        )
    lines += [
        "",
        "Targets (issue 4): genrun at batch 256 >= 80% of the matmul peak and >= 1.5x "
        "torch.compile; at batch 1 >= 3x torch.compile. GFLOP/s per graph is not "
        "counted yet.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput-cpu.md").write_text(text)


if __name__ == "__main__":
    main()
