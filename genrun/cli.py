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
from .flops import COUNTED_OPS, count_flops, matmul_peak_gflops
from .images import save_grid, write_atomic, write_npz_stream
from .manifest import BITS_PER_DIM, IMAGES, TensorSpec
from .readers import DATA_SPECS_HELP, load_data, read_image_files
from .sampler import Sampler, Scorer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# A grid is built in memory and one PNG; beyond this many tiles it is neither
# viewable nor small, so larger runs go to an .npz or a folder (both stream).
MAX_GRID = 10_000

EngineOption = Annotated[
    Path, typer.Option("--engine", help="An .onnx engine written by `genexport onnx`.")
]
RayOption = Annotated[
    bool,
    typer.Option(
        "--ray", help="Run on Ray (vaeflow[ray]): a local Ray, or the cluster of --ray-address."
    ),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster to run on (implies --ray): ray://HOST:10001, or auto."),
]
ActorsOption = Annotated[int, typer.Option(help="With --ray: engine actors (one engine each).")]
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
        typer.Option(
            help="FILE.png (a grid), FILE.npz (array 'images'), DIR/ (one PNG each), or with "
            "--ray DIR.parquet (parquet shards of rows index, pixels)."
        ),
    ] = Path("samples.png"),
    fixed_levels: Annotated[
        int,
        typer.Option(help="Share the first L noise inputs across samples (HVAE: 1 fixes z1)."),
    ] = 0,
    provider: ProviderOption = "auto",
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = 2,
) -> None:
    """Draw uint8 samples from a generate or decode engine (glow, vae, ...)."""
    sampler = Sampler(load(engine, provider))
    # Checks the arguments before anything is written.
    batches = sampler.batches(n, temperature, seed, batch, fixed_levels)
    kind = _output_kind(out)
    if ray or ray_address or kind == "parquet":  # the same samples, made by Ray actors
        batches = _ray_samples(
            engine, out, kind, ray_address, actors, provider, n=n, temperature=temperature,
            seed=seed, batch_size=batch, fixed_levels=fixed_levels,
        )  # fmt: skip
        if batches is None:  # written as parquet shards
            typer.echo(f"{n} samples (Ray, T = {temperature:g}, seed {seed}) -> {out}")
            return
    if kind == "png" and n > MAX_GRID:
        raise UserError(
            f"--n {n} is too many for a PNG grid (at most {MAX_GRID}); write an .npz "
            "(--out samples.npz) or one PNG each (--out DIR), both streamed to disk"
        )
    _check_writable(out.parent)
    # A bar on a terminal's stderr; click draws nothing when stderr is not a tty.
    with typer.progressbar(batches, length=math.ceil(n / batch), file=sys.stderr) as progress:
        if kind == "dir":
            _write_dir(out, progress)
        elif kind == "npz":
            shape = (n, *sampler.engine.manifest.data_shape)
            _writing(out, lambda: write_npz_stream(out, IMAGES, progress, shape))
        else:
            _writing(out, lambda: save_grid(np.concatenate(list(progress)), out))
    typer.echo(
        f"{n} samples ({sampler.engine.provider}, T = {temperature:g}, seed {seed}) -> {out}"
    )


@app.command("likelihood")
def likelihood_command(
    engine: EngineOption,
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Image files (PNG/JPEG) to score, of the engine's image size."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help=f"Images to score instead of FILES: {DATA_SPECS_HELP}.")
    ] = None,
    split: Annotated[str, typer.Option(help="With --data: test, train or all.")] = "test",
    out: Annotated[
        Path | None,
        typer.Option(
            help="CSV of per-image scores: split, index, bits_per_dim (--data) or file, "
            "bits_per_dim (FILES)."
        ),
    ] = None,
    iw_samples: Annotated[
        int,
        typer.Option("--iw-samples", "--k", help="VAE: importance samples K per image."),
    ] = 100,
    seed: Annotated[int, typer.Option(help="VAE: seed of the importance samples.")] = 0,
    batch: Annotated[int, typer.Option(help="Rows per engine call.")] = 256,
    provider: ProviderOption = "auto",
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = 2,
) -> None:
    """Per-image bits/dim (density engines: exact, glow at bin centres; elbo
    engines: IWAE NLL with K draws) and the mean; high values flag
    out-of-distribution images."""
    if (data is None) == (not files):
        raise UserError("pass either image FILES or --data SPEC (one of the two) to score")
    scorer = Scorer(load(engine, provider))
    expected = tuple(scorer.engine.manifest.data_shape)
    splits = {"test": ["test"], "train": ["train"], "all": ["train", "test"]}
    if split not in splits:
        raise UserError(f"unknown --split {split!r}; use test, train or all")
    if out is not None:
        _check_writable(out.parent)
    on_ray = ray or ray_address is not None
    score = _ray_scorer(engine, ray_address, actors, provider) if on_ray else scorer.bits_per_dim
    if files:  # on Ray the actors read the files
        images = files if on_ray else read_image_files(files, expected)
        scores = score(images, iw_samples, seed, batch)
        header, what = ("file", BITS_PER_DIM), "files"
        rows = [(str(path), float(bpd)) for path, bpd in zip(files, scores, strict=True)]
    else:
        loaded = load_data(data, size=expected[1] if data.startswith("folder:") else None)
        if loaded.shape != expected:
            raise UserError(
                f"{data} holds images of shape {loaded.shape}, the engine expects {expected} "
                "(C, H, W); score data like the model's training data"
            )
        header, what = ("split", "index", BITS_PER_DIM), f"{data} {split}"
        rows = [
            (name, index, float(bpd))
            for name in splits[split]
            for index, bpd in enumerate(
                score(getattr(loaded, name).images, iw_samples, seed, batch)
            )
        ]
    scores = np.array([row[-1] for row in rows])
    stderr = scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0
    if out is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows([header, *rows])
        _write_text(out, text.getvalue())
    typer.echo(
        f"{what}: {len(scores)} images, bits/dim mean {scores.mean():.4f} "
        f"+- {stderr:.4f}" + (f" -> {out}" if out else "")
    )


@app.command("bench")
def bench_command(
    engine: EngineOption,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16,256",
    seconds: Annotated[float, typer.Option(help="Timed seconds per batch size.")] = 2.0,
    provider: ProviderOption = "auto",
) -> None:
    """Samples/s, per-call latency (p50/p90/p99), achieved GFLOP/s and its share
    of the machine's measured float32 matmul peak at each batch size, after a
    warm-up, on random inputs of the engine's shapes (medians of the calls)."""
    loaded = load(engine, provider)
    try:
        batch_sizes = [int(size) for size in batch.split(",")]
    except ValueError:
        raise UserError(
            f"--batch {batch!r}: use comma-separated whole numbers, e.g. 1,16,256"
        ) from None
    rows = bench(loaded, batch_sizes, seconds)
    try:
        flops: int | None = count_flops(loaded.path)
        cost = f"{flops / 1e6:.4g} MFLOP per sample (2 x MACs of {', '.join(COUNTED_OPS)})"
    except (ImportError, ValueError) as err:  # no `onnx`, or shapes it cannot infer
        flops, cost = None, f"FLOPs not counted ({err})"
    # The share of peak compares like with like only on the CPU.
    peak = matmul_peak_gflops(loaded.threads) if loaded.provider == "cpu" else None
    manifest = loaded.manifest
    what = (
        f"{loaded.path.name} (no vaeflow manifest)"
        if manifest is None
        else f"{manifest.family} {manifest.role} ({manifest.precision})"
    )
    typer.echo(f"{what} on {loaded.provider}, {loaded.threads} threads")
    typer.echo(
        cost
        + ("" if peak is None else f"; numpy float32 matmul peak {peak:.1f} GFLOP/s, same threads")
    )
    typer.echo(
        f"{'batch':>6} {'calls':>6} {'samples/s':>10} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'GFLOP/s':>8} {'% peak':>7}"
    )
    for row in rows:
        ms = row.latency_ms
        gflops = None if flops is None else flops * row.samples_per_s / 1e9
        typer.echo(
            f"{row.batch_size:>6} {row.calls:>6} {row.samples_per_s:>10.1f} "
            f"{ms['p50']:>9.3f} {ms['p90']:>9.3f} {ms['p99']:>9.3f} "
            f"{'-' if gflops is None else f'{gflops:.2f}':>8} "
            f"{'-' if gflops is None or peak is None else f'{100 * gflops / peak:.1f}':>7}"
        )


@app.command("info")
def info_command(engine: EngineOption, provider: ProviderOption = "auto") -> None:
    """The engine's model, tensors, provenance and the providers present."""
    loaded = load(engine, provider)
    for line in describe(loaded):
        typer.echo(line)


def describe(engine: Engine) -> list[str]:
    manifest = engine.manifest
    provider = f"provider   {engine.provider} (present: {', '.join(available_providers())})"
    if manifest is None:  # a foreign graph: only what the graph itself says
        return [
            f"engine     {engine.path}, no vaeflow manifest (bench and run work; sample and "
            "likelihood need one: re-export with `genexport onnx CKPT`)",
            provider,
            "inputs",
            *_tensors(engine.inputs),
            "outputs",
            *_tensors(engine.outputs),
        ]
    pixels, ckpt = manifest.pixels, manifest.checkpoint
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in ckpt.metrics.items()) or "none recorded"
    return [
        f"engine     {engine.path}, manifest v{manifest.version}",
        f"model      {manifest.family} {manifest.role}, {manifest.precision}, "
        f"images {manifest.data_shape}, latents {manifest.latent_shapes}",
        provider,
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


def _ray_samples(engine: Path, out: Path, kind: str, address, actors, provider, **options):
    """Sample batches from Ray actors, or None once written as parquet shards."""
    from . import distributed

    distributed.start(address)
    if kind != "parquet":
        return distributed.sample_batches(engine, actors=actors, provider=provider, **options)
    _check_writable(out.parent)
    dataset = distributed.sample_dataset(engine, actors=actors, provider=provider, **options)
    distributed.write_parquet(dataset, out)
    return None


def _ray_scorer(engine: Path, address, actors: int, provider: str):
    """A `Scorer.bits_per_dim` whose work runs on Ray actors."""
    from . import distributed

    distributed.start(address)

    def score(images, iw_samples: int, seed: int, batch: int) -> np.ndarray:
        return distributed.score(
            engine, images, iw_samples, seed, batch, actors=actors, provider=provider
        )

    return score


def _output_kind(out: Path) -> str:
    if out.suffix.lower() == ".parquet":
        return "parquet"
    if out.suffix.lower() in (".png", ".npz"):
        return out.suffix.lower()[1:]
    if out.suffix:
        raise UserError(
            f"--out {out}: use a .png grid, an .npz file, a folder or (with --ray) DIR.parquet"
        )
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


def _writing(out: Path, write) -> None:
    """Call `write()`, turning an OS error into a one-line UserError."""
    try:
        write()
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None


def _write_text(out: Path, text: str) -> None:
    _writing(out, lambda: write_atomic(out, text.encode()))


def main() -> None:
    run_cli(app, "genrun")
