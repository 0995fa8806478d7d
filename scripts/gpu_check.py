"""The stages of scripts/gpu-check.sh, one per call, each writing its result
to OUT/NN-STAGE.txt when it finishes (the shell script gives each a timeout).

    python scripts/gpu_check.py STAGE --out DIR [--dry-run]

Stages, in order of value: truth (driver, runtime, the providers that
actually run, in a torch-free process), train (`gentrain fit glow --device
cuda` and `gentrain eval` on CUDA, plus a small VAE for the VAE roles),
parity (every role in ONNX Runtime CUDA against CPU, TF32 off, and TensorRT
plans fp32 and fp16 where TensorRT is installed), graphs (CUDA graphs over
batches 8, 4, 8, 4, 32 against a plain runner), throughput (the GPU table).
Everything comes from the repository (the embedded digits, tiny models).

--dry-run: on a CPU, against tests/fake_gpu.py (fake TensorRT and CUDA; the
ONNX Runtime "cuda" candidate is the CPU provider), so CI knows the script
works before a GPU is lent (tests/test_gpu_check.py)."""

from __future__ import annotations

import argparse
import base64
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
# y = relu(x), x float [N, 4]: an ONNX model to ask each provider what runs,
# before anything is trained (genrun loads it as a foreign graph).
RELU_ONNX = (
    "CAk6QAoMCgF4EgF5IgRSZWx1EgRyZWx1WhQKAXgSDwoNCAESCQoDEgFOCgIIBGIUCgF5Eg8KDQgBEgkK"
    "AxIBTgoCCARCBAoAEBI="
)
GRAPH_BATCHES = (8, 4, 8, 4, 32)
PARITY_BATCHES = (1, 7, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=list(STAGES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        install_fakes()
    started = time.perf_counter()
    lines = STAGES[args.stage](args)
    lines.append(f"seconds {time.perf_counter() - started:.1f}")
    number = list(STAGES).index(args.stage) + 1
    (args.out / f"{number}-{args.stage}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def install_fakes() -> None:
    """tests/fake_gpu.py's tensorrt and cuda.bindings in sys.modules."""
    sys.path.insert(0, str(ROOT / "tests"))
    import fake_gpu

    fake_gpu.install(SimpleNamespace(setitem=lambda d, k, v: d.__setitem__(k, v)))


def gpu_provider(args) -> str:
    return "cpu" if args.dry_run else "cuda"


def device(args) -> str:
    return "cpu" if args.dry_run else "cuda"


# --- 1. ground truth ---------------------------------------------------------


def truth(args) -> list[str]:
    """What this machine is and what actually runs; never imports torch."""
    import importlib.metadata

    from genrun.backends import nvidia
    from genrun.backends import onnxruntime as ort_backend
    from genrun.engine import load
    from genrun.errors import UserError

    lines = [f"python {platform.python_version()}, {platform.machine()}"]
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        lines.append(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.TimeoutExpired) as err:
        lines.append(f"nvidia-smi: {err}")
    version = nvidia.driver_cuda_version()
    lines.append(f"driver CUDA version: {nvidia.version_text(version) if version else version}")
    for name in ("onnxruntime", "onnxruntime-gpu", "cuda-bindings", "tensorrt", "tensorrt-cu13",
                 "cupy-cuda13x", "numpy", "onnx", "typer"):  # fmt: skip
        try:
            lines.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    try:
        from genrun.backends import cuda_memory

        found = cuda_memory.current_device()
        runtime = cuda_memory.cudart().cudaRuntimeGetVersion()[1]
        lines.append(f"cuda-bindings: {found} (runtime {nvidia.version_text(runtime)})")
    except UserError as err:
        lines.append(f"cuda-bindings: {err}")
    lines.append(f"onnxruntime compiled in: {', '.join(ort_backend.available_providers())}")
    relu = args.out / "relu.onnx"
    relu.write_bytes(base64.b64decode(RELU_ONNX))
    for provider in ("cuda", "tensorrt", "auto"):
        try:
            with load(relu, provider=provider) as engine:
                engine.run(x=[[-1.0, 2.0, 0.0, 3.0]])
                lines.append(f"--provider {provider}: runs on {engine.provider} {engine.settings}")
        except UserError as err:
            lines.append(f"--provider {provider}: {err}")
    lines.append(f"torch imported: {'torch' in sys.modules}")
    return lines


# --- 2. training on CUDA -----------------------------------------------------


def families(args) -> tuple[str, ...]:
    """The dry run checks the code paths with Glow alone (both roles) in fp32
    (a CPU has minutes for it; fp16 export and plans have their own tests)."""
    return ("glow",) if args.dry_run else ("glow", "vae")


def precisions(args) -> tuple[str, ...]:
    return ("fp32",) if args.dry_run else ("fp32", "fp16")


def train(args) -> list[str]:
    # The dry run proves the stages run; a smaller Glow for fewer steps keeps it
    # seconds on a shared CPU (parity and the graphs have their own tests).
    steps, warmup = ("4", "1") if args.dry_run else ("300", "10")
    depth, hidden = ("2", "16") if args.dry_run else ("4", "32")
    lines = []
    runs = {
        "glow": ["--levels", "2", "--depth", depth, "--hidden", hidden, "--optimizer", "adamax"],
        "vae": ["--latent", "8", "--hidden", "64"],
    }
    for family in families(args):
        options = runs[family]
        run = args.out / family
        fit = [sys.executable, "-m", "gentrain", "fit", family, "--device", device(args),
               "--steps", steps, "--warmup", warmup, "--eval-every", steps, "--ckpt-every", steps,
               "--out", str(run), "--overwrite", *options]  # fmt: skip
        lines += _command(fit, f"fit {family}")
        evaluate = [sys.executable, "-m", "gentrain", "eval", str(run / "checkpoint.pt"),
                    "--device", device(args), "--iw-samples", "1" if args.dry_run else "16",
                    "--json", str(run / "eval.json")]  # fmt: skip
        lines += _command(evaluate, f"eval {family}")
    return lines


def _command(argv: list[str], what: str) -> list[str]:
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    tail = (result.stdout.strip().splitlines() or [""])[-1]
    error = (result.stderr.strip().splitlines() or [""])[-1]
    seconds = time.perf_counter() - started
    return [f"{what}: exit {result.returncode} in {seconds:.1f} s: {tail} {error}".rstrip()]


# --- 3. parity on the GPU ----------------------------------------------------


def parity(args) -> list[str]:
    """Every role of both models: ONNX Runtime on the GPU against the CPU,
    within the bounds the export recorded (pixels within a level); then
    TensorRT plans, whose build checks their own parity (fp32, fp16)."""
    from genexport.export import export_checkpoint
    from genexport.tensorrt import PlanOptions, export_plans
    from genrun.compare import Case, compare, random_feeds
    from genrun.engine import load
    from genrun.errors import UserError

    lines = []
    engines = []
    for family in families(args):
        checkpoint = args.out / family / "checkpoint.pt"
        for precision in precisions(args):
            exported = export_checkpoint(
                checkpoint, args.out / "engines", precision=precision, name=family
            )
            engines += [(precision, e.path) for e in exported]
    for precision, path in engines:
        try:
            with load(path, provider="cpu") as cpu, load(path, provider=gpu_provider(args)) as gpu:
                bounds = cpu.manifest.parity[-1].tolerance
                outputs = {s.name for s in cpu.outputs}
                cases = [Case(f"batch {b}", random_feeds(cpu.inputs, b, b)) for b in PARITY_BATCHES]
                check = compare(
                    cpu.runner, gpu.runner, cases,
                    {name: bound for name, bound in bounds.items() if name in outputs},
                    precision=precision, reference_name="onnxruntime-cpu",
                    batch_sizes=PARITY_BATCHES,
                )  # fmt: skip
                verdict = "ok" if not check.failures() else f"FAILED {check.failures()}"
                errors = {k: f"{v:.3g}" for k, v in check.max_abs_error.items()}
                lines.append(f"{path.name} on {gpu.provider} {gpu.settings}: {verdict} {errors}")
        except UserError as err:
            lines.append(f"{path.name}: not run: {err}")
    for family in families(args):
        for precision in precisions(args):
            source = [p for pr, p in engines if pr == precision and p.name.startswith(family)]
            try:
                for path in source:
                    (plan,) = export_plans(
                        path, args.out / "plans", options=PlanOptions(precision, 8, 64)
                    )
                    record = plan.parity
                    errors = {k: f"{v:.3g}" for k, v in record.max_abs_error.items()}
                    lines.append(f"{plan.path.name}: built, parity ok {errors}")
            except UserError as err:
                lines.append(f"{family} {precision} plans: not built: {err}")
    return lines


# --- 4. CUDA graphs ----------------------------------------------------------


def graphs(args) -> list[str]:
    import numpy as np

    from genrun.bench import random_inputs
    from genrun.engine import load
    from genrun.errors import UserError

    plans = sorted((args.out / "plans").glob("*.plan"))
    if not plans:
        return ["no plans (stage parity built none: see 3-parity.txt): CUDA graphs not checked"]
    lines = []
    for path in plans:
        try:
            with load(path) as plain, load(path, cuda_graphs=True) as graphed:
                bad = []
                for batch in GRAPH_BATCHES:
                    feeds = random_inputs(plain, batch)
                    want, got = plain.run(**feeds), graphed.run(**feeds)
                    bad += [f"{n}@{batch}" for n in want if not np.array_equal(want[n], got[n])]
                captured = sorted(graphed.runner.graphs)
            verdict = "equal" if not bad else f"DIFFER {bad}"
            lines.append(f"{path.name}: batches {GRAPH_BATCHES} {verdict}; graphed {captured}")
        except UserError as err:
            lines.append(f"{path.name}: {err}")
    return lines


# --- 5. throughput -----------------------------------------------------------


def throughput(args) -> list[str]:
    table = args.out / "throughput-gpu.md"
    argv = [sys.executable, str(ROOT / "benchmarks" / "throughput_gpu.py"), "--data", "digits",
            "--modes", "", "--engines", str(args.out), "--out", str(table)]  # fmt: skip
    if args.dry_run:
        argv += ["--tiny", "--device", "cpu", "--seconds", "0.02", "--batches", "1"]
    else:
        argv += ["--seconds", "0.3", "--batches", "1,256,4096"]
    lines = _command(argv, "benchmarks/throughput_gpu.py")
    if table.is_file():
        lines += table.read_text().splitlines()
    return lines


STAGES = {
    "truth": truth,
    "train": train,
    "parity": parity,
    "graphs": graphs,
    "throughput": throughput,
}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    try:
        main()
    except Exception as err:  # the stage's file says what broke; the script goes on
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        raise
