"""GPU throughput side by side in one process, every peer at its best
configuration, on the issue's reference models: Glow (L=2, K=8, 128 hidden,
1x28x28; generate and density) and the MLP VAE decoder (784-400-20).

    python benchmarks/throughput_gpu.py [--seconds 1] [--batches 1,256,4096] [--data mnist:DIR]
    python benchmarks/throughput_gpu.py --tiny --device cpu   # smoke run of the code paths
    --modes ""  leaves torch.compile out (scripts/gpu-check.sh: no time to compile)

Peers (each where installed; a row says which were not):
- PyTorch eager on CUDA (gentrain's model), fp32;
- torch.compile of the frozen exported module (genexport.graphs: the graph
  genrun runs), dynamic=False, the fastest of --modes (named per row);
- ONNX Runtime CUDA (cuDNN exhaustive search, IO binding), fp32 and fp16 graphs;
- ONNX Runtime TensorRT (engine and timing caches beside the engine), fp32, fp16;
- TensorRT plans (`genexport tensorrt`), fp32 and fp16.
Like with like: TF32 is off for every peer (torch matmul and cuDNN, ONNX
Runtime's use_tf32=0, TensorRT plans built without it), so fp32 rows are
float32 everywhere; the table's TF32 column says what each row ran with.
Per row: samples/s (batch / median call), p50 and p99 latency per call,
achieved TFLOP/s (genrun.flops' count per sample) and its share of this GPU's
measured matmul peak at that precision (torch.matmul 8192^3, TF32 off for
fp32). Every cell is timed by genrun.bench.timed_row (genrun bench's loop);
a PyTorch call synchronises the device before it returns.

Targets (checked here, never in tests): the fp16 plan >= 3x torch.compile at
batch 1 and >= 2x at batch 4096; `genrun sample` end to end (noise in, uint8
out on the host) >= 80% of the plan's compute throughput at batch 4096;
fp16 vs fp32: density within 0.01 bits/dim on the MNIST test split and
pixels equal within one level on >= 99% of pixels.

Writes benchmarks/results/throughput-gpu.md (not with --tiny): GPU, driver,
library versions, the table, the targets. Nothing is written without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from throughput import COMPILE_MODES
from torch.utils import _pytree as pytree

from genexport.export import export_checkpoint
from genexport.graphs import build_graph
from genrun import Sampler, Scorer, load
from genrun.bench import random_inputs, time_calls, timed_row
from genrun.engine import available_providers
from genrun.errors import UserError
from genrun.flops import count_flops
from genrun.readers import load_data
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.models import VAE, Glow, GlowConfig, VAEConfig
from gentrain.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"
GRAPHS = [("glow", "generate"), ("glow", "density"), ("vae", "decode")]
NOT_HERE = "not installed on this machine"


def matmul_peak_tflops(device: str, dtype: torch.dtype, seconds: float) -> float:
    size = 8192 if device == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    median = statistics.median(time_calls(lambda: (torch.mm(a, b), sync()), seconds))
    return 2 * size**3 / median / 1e12


def torch_rows(model, role, batch, device, args) -> list[tuple[str, object]]:
    """(peer, BenchRow or reason) for eager and the best torch.compile mode."""
    graph = build_graph(model, role)
    inputs = graph.sample_inputs(batch, torch.Generator().manual_seed(0))
    inputs = pytree.tree_map(lambda tensor: tensor.to(device), inputs)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    eager = graph.reference.to(device).eval()
    frozen = graph.module.to(device).eval()
    rows = []
    with torch.inference_mode():
        rows.append(
            ("PyTorch eager fp32", timed_row(lambda: (eager(*inputs), sync()), batch, args.seconds))
        )
        if not args.modes:
            return rows
        best, best_mode = None, None
        for mode in args.modes:
            torch._dynamo.reset()
            compiled = torch.compile(frozen, mode=mode, dynamic=False)
            row = timed_row(
                lambda compiled=compiled: (compiled(*inputs), sync()), batch, args.seconds
            )
            if best is None or row.samples_per_s > best.samples_per_s:
                best, best_mode = row, mode
        rows.append((f"torch.compile fp32 ({best_mode}, frozen, dynamic=False)", best))
    return rows


def engine_row(path: Path | None, provider: str, batch: int, args, **options) -> object:
    """A BenchRow of one engine file through genrun's Engine, or the reason there is none."""
    if path is None:
        return NOT_HERE
    try:
        engine = load(path, provider=provider, **options)
    except UserError as err:
        return f"not run: {err}"
    with engine:  # frees the session or the plan's device memory before the next row
        feeds = random_inputs(engine, batch)
        return timed_row(lambda: engine.run(**feeds), batch, args.seconds)


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


def build_plans(paths: dict[str, Path], precision: str, workdir: Path, max_batch: int):
    """Plans for these ONNX engines (role -> .plan), or None without TensorRT."""
    try:
        from genexport.tensorrt import PlanOptions, export_plans

        options = PlanOptions(precision, opt_batch=min(256, max_batch), max_batch=max_batch)
        return {
            role: export_plans(path, workdir, options=options)[0].path
            for role, path in paths.items()
        }
    except UserError as err:
        print(f"TensorRT plans ({precision}): {err}", file=sys.stderr)
        return None


def existing_engines(folder: Path):
    """(engines, fp16, plans) as main() builds them, from scripts/gpu-check.sh's
    OUT folder: FAMILY/checkpoint.pt, engines/FAMILY.ROLE[.fp16].onnx and
    plans/FAMILY.ROLE[.fp16].plan (no training or export: the check has no time)."""
    engines, fp16, plans = {}, {}, {}
    for checkpoint in sorted(folder.glob("*/checkpoint.pt")):
        family = checkpoint.parent.name
        onnx = sorted((folder / "engines").glob(f"{family}.*.onnx"))
        if not onnx:
            continue
        model = model_from_checkpoint(load_checkpoint(checkpoint))
        role_of = {p: p.name.split(".")[1] for p in onnx}
        engines[family] = (model, {role_of[p]: p for p in onnx if ".fp16." not in p.name})
        fp16[family] = {role_of[p]: p for p in onnx if ".fp16." in p.name}
        for precision in ("fp32", "fp16"):
            found = {
                p.name.split(".")[1]: p
                for p in (folder / "plans").glob(f"{family}.*.plan")
                if (".fp16." in p.name) == (precision == "fp16")
            }
            plans[(family, precision)] = found or None
    return engines, fp16, plans


def versions() -> str:
    names = ["torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python", "cuda-bindings"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} {NOT_HERE}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="digits", help="digits (shipped) or mnist:DIR")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batches", default="1,256,4096")
    parser.add_argument("--modes", default="max-autotune," + ",".join(COMPILE_MODES))
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run")
    parser.add_argument("--tiny", action="store_true", help="small models, no file written")
    parser.add_argument("--out", type=Path, help="write the table here (default results/)")
    parser.add_argument(
        "--engines", type=Path, help="use scripts/gpu-check.sh's OUT folder: no training, no export"
    )
    args = parser.parse_args()
    # Like with like: float32 is float32 in every peer (see the module doc).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    args.modes = [m for m in dict.fromkeys(args.modes.split(",")) if m]
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured, nothing written", file=sys.stderr)
        sys.exit(1)
    batches = [int(b) for b in args.batches.split(",")]
    data = load_data(args.data)
    peaks = {
        precision: matmul_peak_tflops(args.device, dtype, args.seconds)
        for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16))
        if args.device == "cuda" or precision == "fp32"
    }
    gpu_providers = [p for p in ("cuda", "tensorrt") if p in available_providers()]
    rows, checks = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.engines is not None:
            engines, fp16, plans = existing_engines(args.engines)
        else:
            engines = trained_engines(workdir, data, args.tiny, device=args.device)
            fp16 = {
                family: {
                    e.graph.role: e.path
                    for e in export_checkpoint(
                        workdir / family / "checkpoint.pt", workdir, precision="fp16", name=family
                    )
                }
                for family in engines
            }
            plans = {
                (family, precision): build_plans(
                    paths if precision == "fp32" else fp16[family], precision, workdir, max(batches)
                )
                for family, (_, paths) in engines.items()
                for precision in ("fp32", "fp16")
            }
        for family, role in GRAPHS:
            if family not in engines:
                continue
            model, paths = engines[family]
            flops = count_flops(paths[role])
            for batch in batches:
                cells = torch_rows(model, role, batch, args.device, args)
                for precision, path in (("fp32", paths[role]), ("fp16", fp16[family].get(role))):
                    for provider in ("cuda", "tensorrt"):
                        peer = f"ONNX Runtime {provider} {precision}"
                        here = path if provider in gpu_providers and path else None
                        cells.append((peer, engine_row(here, provider, batch, args)))
                    plan = (plans.get((family, precision)) or {}).get(role)
                    cells.append(
                        (f"TensorRT plan {precision}", engine_row(plan, "tensorrt", batch, args))
                    )
                    cells.append(
                        (
                            f"TensorRT plan {precision}, CUDA graphs",
                            engine_row(plan, "tensorrt", batch, args, cuda_graphs=True),
                        )
                    )
                rows += [(f"{family} {role}", batch, peer, cell, flops) for peer, cell in cells]
                print(rows[-1], flush=True)
        checks = targets(rows, engines, fp16, plans, data, batches, args)
    write(rows, checks, peaks, args)


def targets(rows, engines, fp16, plans, data, batches, args) -> list[str]:
    """The issue's targets, each 'met', 'missed' or 'not measured' with why."""
    by = {(graph, batch, peer): cell for graph, batch, peer, cell, _ in rows}

    def speed(graph, batch, prefix):
        cells = [
            c for (g, b, p), c in by.items() if g == graph and b == batch and p.startswith(prefix)
        ]
        speeds = [c.samples_per_s for c in cells if not isinstance(c, str)]
        return max(speeds) if speeds else None

    lines = []
    for batch, factor in ((1, 3), (max(batches), 2)):
        plan = speed("glow generate", batch, "TensorRT plan fp16")
        compiled = speed("glow generate", batch, "torch.compile")
        if plan is None or compiled is None:
            lines.append(f"fp16 plan >= {factor}x torch.compile at batch {batch}: not measured")
        else:
            ratio = plan / compiled
            verdict = "met" if ratio >= factor else "missed"
            lines.append(
                f"fp16 plan >= {factor}x torch.compile at batch {batch}: {ratio:.2f}x, {verdict}"
            )
    if not fp16["glow"]:
        return [*lines, "fp16 targets and end to end: not measured (no fp16 engines)"]
    # End to end: genrun's Sampler on the fastest engine it can load, at the largest batch.
    batch = max(batches)
    plan16 = (plans.get(("glow", "fp16")) or {}).get("generate")
    source = plan16 or fp16["glow"]["generate"]
    provider = "tensorrt" if plan16 else (available_providers()[0])
    compute = speed("glow generate", batch, "TensorRT plan fp16" if plan16 else "ONNX Runtime")
    with load(source, provider=provider) as engine:
        n = batch * 4
        started = time.perf_counter()
        Sampler(engine).sample(n, batch_size=batch)
        end_to_end = n / (time.perf_counter() - started)
    if compute:
        share = end_to_end / compute
        lines.append(
            f"`genrun sample` end to end at batch {batch} ({source.name}, {provider}): "
            f"{end_to_end:,.0f} samples/s = {share:.0%} of compute, "
            + ("met" if share >= 0.8 else "missed")
        )
    else:
        lines.append(
            f"`genrun sample` end to end at batch {batch}: {end_to_end:,.0f} samples/s "
            f"({source.name}, {provider}); its compute throughput not measured (no GPU engine)"
        )
    # fp16 vs fp32 quality on the test split, on the GPU engines if present.
    gpu = "cuda" if "cuda" in available_providers() else "cpu"
    images = data.test.images
    with (
        load(engines["glow"][1]["density"], provider=gpu) as density32,
        load(fp16["glow"]["density"], provider=gpu) as density16,
    ):
        bpd32 = Scorer(density32).bits_per_dim(images)
        bpd16 = Scorer(density16).bits_per_dim(images)
    difference = abs(float(bpd16.mean() - bpd32.mean()))
    lines.append(
        f"fp16 vs fp32 density ({gpu}): mean bits/dim {bpd32.mean():.4f} vs {bpd16.mean():.4f}, "
        f"|difference| {difference:.4f}, " + ("met" if difference <= 0.01 else "missed")
    )
    with (
        load(engines["glow"][1]["generate"], provider=gpu) as generate32,
        load(fp16["glow"]["generate"], provider=gpu) as generate16,
    ):
        s32 = Sampler(generate32).sample(1000, seed=0)
        s16 = Sampler(generate16).sample(1000, seed=0)
        level = 255 / (2**generate16.manifest.pixels.n_bits - 1)
    within = float(np.mean(np.abs(s32.astype(int) - s16) <= math.ceil(level)))
    lines.append(
        f"fp16 vs fp32 pixels ({gpu}): {within:.2%} within one level, "
        + ("met" if within >= 0.99 else "missed")
    )
    return lines


def write(rows, checks, peaks, args) -> None:
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
    driver = ""
    if args.device == "cuda":
        from genrun.backends.cuda_memory import current_device

        try:
            driver = f", CUDA driver {current_device().driver}"
        except UserError as err:
            driver = f", driver not read ({err})"
    peak_text = ", ".join(f"{p} {v:.1f} TFLOP/s" for p, v in peaks.items())
    lines = [
        "# Throughput on GPU: PyTorch eager, torch.compile, ONNX Runtime CUDA/TensorRT, "
        "TensorRT plans",
        "",
        f"Machine: {name}{driver}; {versions()}; Python {platform.python_version()}. "
        f"Matmul peak (torch.mm 8192^3, TF32 off): {peak_text}. Medians of per-call time "
        f"over about {args.seconds:g} s per cell after warm-up (genrun.bench.timed_row). "
        f"Data: {args.data}. TF32 off in every peer (torch.backends.cuda.matmul.allow_tf32 "
        f"and cudnn.allow_tf32 False, ONNX Runtime use_tf32=0, plans without BuilderFlag.TF32)"
        + ("; torch.compile not run (--modes empty)." if not args.modes else "."),
        "",
        "| graph | batch | peer | TF32 | samples/s | p50 ms | p99 ms | TFLOP/s | % peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    for graph, batch, peer, cell, flops in rows:
        if isinstance(cell, str):
            lines.append(f"| {graph} | {batch} | {peer} | {tf32} | {cell} | | | | |")
            continue
        tflops = flops * cell.samples_per_s / 1e12
        peak = peaks.get("fp16" if "fp16" in peer else "fp32")
        share = f"{100 * tflops / peak:.1f}%" if peak else "-"
        ms = cell.latency_ms
        lines.append(
            f"| {graph} | {batch} | {peer} | {tf32} | {cell.samples_per_s:,.0f} | {ms['p50']:.3f} "
            f"| {ms['p99']:.3f} | {tflops:.2f} | {share} |"
        )
    lines += ["", "Targets:", "", *(f"- {line}" for line in checks)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    elif not args.tiny:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "throughput-gpu.md").write_text(text)


if __name__ == "__main__":
    main()
