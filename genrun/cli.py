"""`genrun`: sample from and score with exported engines, without PyTorch.

genrun sample --engine runs/demo/demo.generate.onnx --n 64 --out grid.png
genrun likelihood --engine runs/demo/demo.density.onnx --data digits --out scores.csv
genrun bench --engine runs/demo/demo.generate.onnx --batch 1,16,256
genrun info --engine runs/demo/demo.generate.onnx
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image

from .bench import bench
from .engine import PROVIDERS, Engine, available_providers, load
from .errors import UserError, run_cli
from .images import save_grid, write_atomic
from .manifest import TensorSpec
from .readers import DATA_SPECS_HELP, load_data
from .sampler import Sampler, Scorer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

EngineOption = Annotated[
    Path, typer.Option("--engine", help="An .onnx engine written by `genexport onnx`.")
]
ProviderOption = Annotated[
    str,
    typer.Option(
        help=f"ONNX Runtime execution provider: auto (the best present), {', '.join(PROVIDERS)}."
    ),
]


@app.command("sample")
def sample_command(
    engine: EngineOption,
    n: Annotated[int, typer.Option("--n", help="Number of samples.")] = 64,
    batch: Annotated[int, typer.Option(help="Samples per engine call.")] = 256,
    temperature: Annotated[
        float, typer.Option(help="Scale of the latent noise: 1 the model, 0 its mode.")
    ] = 0.7,
    seed: Annotated[
        int, typer.Option(help="Noise seed; the same seed gives the same samples.")
    ] = 0,
    out: Annotated[
        Path,
        typer.Option(help="FILE.png (a grid), FILE.npz (array 'images'), or DIR/ (one PNG each)."),
    ] = Path("samples.png"),
    provider: ProviderOption = "auto",
) -> None:
    """Draw uint8 samples from a glow generate or vae decode engine."""
    sampler = Sampler(load(engine, provider))
    batches = sampler.batches(n, temperature, seed, batch)  # checks the arguments first
    kind = _output_kind(out)
    _check_writable(out.parent)
    # A bar on a terminal's stderr; click draws nothing when stderr is not a tty.
    with typer.progressbar(batches, length=math.ceil(n / batch), file=sys.stderr) as progress:
        if kind == "dir":
            _write_dir(out, progress)
        else:
            _write_file(out, kind, np.concatenate(list(progress)))
    typer.echo(
        f"{n} samples ({sampler.engine.provider}, T = {temperature:g}, seed {seed}) -> {out}"
    )


@app.command("likelihood")
def likelihood_command(
    engine: EngineOption,
    data: Annotated[str, typer.Option(help=f"Images to score: {DATA_SPECS_HELP}.")],
    split: Annotated[str, typer.Option(help="test, train or all.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="CSV of per-image scores (split, index, bits_per_dim).")
    ] = None,
    k: Annotated[int, typer.Option(help="VAE: importance samples per image.")] = 100,
    seed: Annotated[int, typer.Option(help="VAE: seed of the importance samples.")] = 0,
    batch: Annotated[int, typer.Option(help="Rows per engine call.")] = 256,
    provider: ProviderOption = "auto",
) -> None:
    """Per-image bits/dim (glow density: bin centres; vae elbo: IWAE NLL with K
    draws) and the mean; high values flag out-of-distribution images."""
    scorer = Scorer(load(engine, provider))
    splits = {"test": ["test"], "train": ["train"], "all": ["train", "test"]}
    if split not in splits:
        raise UserError(f"unknown --split {split!r}; use test, train or all")
    expected = tuple(scorer.engine.manifest.data_shape)
    loaded = load_data(data, size=expected[1] if data.startswith("folder:") else None)
    if loaded.shape != expected:
        raise UserError(
            f"{data} holds images of shape {loaded.shape}, the engine expects {expected} "
            "(C, H, W); score data like the model's training data"
        )
    if out is not None:
        _check_writable(out.parent)
    rows = [
        (name, index, float(bpd))
        for name in splits[split]
        for index, bpd in enumerate(
            scorer.bits_per_dim(getattr(loaded, name).images, k=k, seed=seed, batch_size=batch)
        )
    ]
    scores = np.array([row[2] for row in rows])
    stderr = scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0
    if out is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows([("split", "index", "bits_per_dim"), *rows])
        _write_text(out, text.getvalue())
    typer.echo(
        f"{data} {split}: {len(scores)} images, bits/dim mean {scores.mean():.4f} "
        f"+- {stderr:.4f}" + (f" -> {out}" if out else "")
    )


@app.command("bench")
def bench_command(
    engine: EngineOption,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16,256",
    seconds: Annotated[float, typer.Option(help="Timed seconds per batch size.")] = 2.0,
    provider: ProviderOption = "auto",
) -> None:
    """Samples/s and per-call latency (p50/p90/p99) at each batch size, after a
    warm-up, on random inputs of the engine's shapes."""
    loaded = load(engine, provider)
    try:
        batch_sizes = [int(size) for size in batch.split(",")]
    except ValueError:
        raise UserError(
            f"--batch {batch!r}: use comma-separated whole numbers, e.g. 1,16,256"
        ) from None
    rows = bench(loaded, batch_sizes, seconds)
    manifest = loaded.manifest
    typer.echo(f"{manifest.family} {manifest.role} ({manifest.precision}) on {loaded.provider}")
    typer.echo(
        f"{'batch':>6} {'calls':>6} {'samples/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9}"
    )
    for row in rows:
        ms = row.latency_ms
        typer.echo(
            f"{row.batch_size:>6} {row.calls:>6} {row.samples_per_s:>10.1f} "
            f"{ms['p50']:>9.3f} {ms['p90']:>9.3f} {ms['p99']:>9.3f}"
        )


@app.command("info")
def info_command(engine: EngineOption, provider: ProviderOption = "auto") -> None:
    """The engine's model, tensors, provenance and the providers present."""
    loaded = load(engine, provider)
    for line in describe(loaded):
        typer.echo(line)


def describe(engine: Engine) -> list[str]:
    manifest, pixels, ckpt = engine.manifest, engine.manifest.pixels, engine.manifest.checkpoint
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in ckpt.metrics.items()) or "none recorded"
    return [
        f"engine     {engine.path}, manifest v{manifest.version}",
        f"model      {manifest.family} {manifest.role}, {manifest.precision}, "
        f"images {manifest.data_shape}, latents {manifest.latent_shapes}",
        f"provider   {engine.provider} (present: {', '.join(available_providers())})",
        "inputs",
        *_tensors(manifest.inputs),
        "outputs",
        *_tensors(manifest.outputs),
        f"pixels     n_bits {pixels.n_bits}, discretisation {pixels.discretization_nats:.4f} nats",
        f"checkpoint {ckpt.file} (sha256 {ckpt.sha256[:12]}...), step {ckpt.step}: {metrics}",
        f"export     {manifest.export.exporter}, opset {manifest.export.opset}",
    ]


def _tensors(specs: list[TensorSpec]) -> list[str]:
    return [
        f"  {spec.name:<14} {spec.dtype:<8} {spec.shape!s:<18} {spec.description}"
        + ("" if spec.default is None else f" (default {spec.default:g})")
        for spec in specs
    ]


def _output_kind(out: Path) -> str:
    if out.suffix.lower() in (".png", ".npz"):
        return out.suffix.lower()[1:]
    if out.suffix:
        raise UserError(f"--out {out}: use a .png grid, an .npz file or a folder")
    return "dir"


def _check_writable(folder: Path) -> None:
    """Fail before the work, not after: the folder must exist or be creatable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {folder} ({err.strerror}); pick a writable --out") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder} is not writable; pick a writable --out")


def _write_dir(out: Path, batches) -> None:
    """One PNG per sample, streamed batch by batch into a hidden folder that is
    renamed to `out` only when complete."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; pick a new --out")
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.mkdir()
        index = 0
        for batch in batches:
            for image in batch:
                picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
                Image.fromarray(picture).save(tmp / f"{index:06d}.png")
                index += 1
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_file(out: Path, kind: str, images: np.ndarray) -> None:
    """A PNG grid or an npz of `images`, written atomically."""
    try:
        if kind == "png":
            save_grid(images, out)
        else:
            buffer = io.BytesIO()
            np.savez(buffer, images=images)
            write_atomic(out, buffer.getvalue())
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None


def _write_text(out: Path, text: str) -> None:
    try:
        write_atomic(out, text.encode())
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None


def main() -> None:
    run_cli(app, "genrun")
