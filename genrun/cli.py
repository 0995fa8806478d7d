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
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from PIL import Image

from .atomic import atomic_folder, is_stream, resolve_target, write_atomic
from .bench import bench
from .describe import labelled, manifest_lines, tensor_lines
from .engine import PROVIDERS, Engine, available_providers, load
from .errors import UserError, run_cli
from .flops import COUNTED_OPS, count_flops, matmul_peak_gflops
from .images import save_grid, write_npz_stream
from .manifest import IMAGES
from .readers import DATA_SPECS_HELP, load_data, read_image_files
from .sampler import SampleBatches, Sampler
from .scorer import Scorer, Scores

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# A grid is built in memory and one PNG; beyond this many tiles it is neither
# viewable nor small, so larger runs go to an .npz or a folder (both stream).
MAX_GRID = 10_000

EngineOption = Annotated[
    Path,
    typer.Option(
        "--engine",
        help="An .onnx engine (`genexport onnx`) or a TensorRT .plan (`genexport tensorrt`).",
    ),
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
        help=f"ONNX Runtime execution provider: auto (the best present), {', '.join(PROVIDERS)}"
        " (a .plan: auto or tensorrt)."
    ),
]
CudaGraphsOption = Annotated[
    bool,
    typer.Option(
        "--cuda-graphs", help="TensorRT .plan: replay one captured CUDA graph per batch size."
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
            help="FILE.png (a grid), FILE.npz (array 'images'), DIR/ (one PNG each), a "
            "pipe or device such as /dev/stdout (the npz, streamed), or with --ray "
            "DIR.parquet (parquet shards of rows index, pixels)."
        ),
    ] = Path("samples.png"),
    fixed_levels: Annotated[
        int,
        typer.Option(help="Share the first L noise inputs across samples (HVAE: 1 fixes z1)."),
    ] = 0,
    provider: ProviderOption = "auto",
    nonfinite: Annotated[
        str,
        typer.Option(
            help="Samples with NaN/inf in their images: error (count them, write nothing, exit "
            "2), drop (leave them out, counted) or keep (write them, counted)."
        ),
    ] = "error",
    cuda_graphs: CudaGraphsOption = False,
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = 2,
) -> None:
    """Draw uint8 samples from a generate or decode engine (glow, vae, ...)."""
    sampler = Sampler(load(engine, provider, cuda_graphs=cuda_graphs))
    # Checks the arguments before anything is written.
    batches = sampler.batches(n, temperature, seed, batch, fixed_levels, nonfinite)
    kind = _output_kind(out)
    if ray or ray_address or kind == "parquet":  # the same samples, made by Ray actors
        if nonfinite != "error":
            raise UserError(
                f"--nonfinite {nonfinite} is not supported with Ray yet (its actors refuse "
                "non-finite samples); drop --ray, or keep the default --nonfinite error"
            )
        chunks = _ray_samples(
            engine, out, kind, ray_address, actors, provider, n=n, temperature=temperature,
            seed=seed, batch_size=batch, fixed_levels=fixed_levels,
        )  # fmt: skip
        if chunks is None:  # written as parquet shards
            typer.echo(f"{n} samples (Ray, T = {temperature:g}, seed {seed}) -> {out}")
            return
        batches = SampleBatches.of_finite(chunks, n)
    if kind == "png" and n > MAX_GRID:
        raise UserError(
            f"--n {n} is too many for a PNG grid (at most {MAX_GRID}); write an .npz "
            "(--out samples.npz) or one PNG each (--out DIR), both streamed to disk"
        )
    _check_writable(out)
    # A bar on a terminal's stderr; click draws nothing when stderr is not a tty.
    with typer.progressbar(batches, length=math.ceil(n / batch), file=sys.stderr) as progress:
        if kind == "dir":
            _write_dir(out, progress)
        elif kind == "npz" and nonfinite == "drop":  # the count is known only at the end
            _writing(out, lambda: _write_npz_spooled(out, progress, sampler.engine.manifest))
        elif kind == "npz":
            shape = (n, *sampler.engine.manifest.data_shape)
            _writing(out, lambda: write_npz_stream(out, IMAGES, progress, shape))
        else:
            kept = list(progress)
            if not kept:
                raise UserError(f"{batches.summary()}: no sample left to write to {out}")
            _writing(out, lambda: save_grid(np.concatenate(kept), out))
    written = n - (batches.nonfinite if nonfinite == "drop" else 0)
    typer.echo(
        f"{written} samples ({sampler.engine.provider}, T = {temperature:g}, seed {seed}) -> {out}",
        err=_is_stdout(out),
    )
    if batches.nonfinite:
        typer.echo(f"warning: {batches.summary()}", err=True)


NONFINITE = ("error", "drop", "keep")


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
    score: Annotated[
        str,
        typer.Option(
            help="nll (a bound on -log2 P(x) / D), complexity (nll minus the PNG bits per "
            "pixel), typicality (distance of the bits/dim of groups of --m images from the "
            "training mean, in standard errors), or bpd_density_at_centers (density at bin "
            "centres: not a bound, can be negative). Higher = more out-of-distribution."
        ),
    ] = "nll",
    out: Annotated[
        Path | None,
        typer.Option(
            help="CSV of per-image scores: split, index, SCORE (--data) or file, SCORE (FILES); "
            "typicality with --m > 1: one row per group."
        ),
    ] = None,
    iw_samples: Annotated[
        int | None,
        typer.Option(
            "--iw-samples",
            "--k",
            help="Draws K per image of the bound: density engines uniform dequantisation "
            "offsets (default 1, the variational bound; more: the importance-weighted "
            "bound), elbo engines latents (default 100, the IWAE bound).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws.")] = 0,
    m: Annotated[int, typer.Option("--m", help="typicality: images per group (M).")] = 1,
    nonfinite: Annotated[
        str,
        typer.Option(
            help="Non-finite scores: error (exit 2 naming them), drop (leave them out of the "
            "CSV and the mean) or keep (write them to the CSV, average the rest)."
        ),
    ] = "error",
    batch: Annotated[int, typer.Option(help="Rows per engine call (images x draws).")] = 256,
    provider: ProviderOption = "auto",
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = 2,
) -> None:
    """Per-image scores and their mean; high values flag out-of-distribution
    images. The default, nll, is a bound on -log2 P(x) / D for the discrete image
    (density engines: dequantised with seeded uniform offsets; elbo engines: IWAE
    with K draws), never negative."""
    if (data is None) == (not files):
        raise UserError("pass either image FILES or --data SPEC (one of the two) to score")
    if nonfinite not in NONFINITE:
        raise UserError(f"unknown --nonfinite {nonfinite!r}; use one of: {', '.join(NONFINITE)}")
    scorer = Scorer(load(engine, provider))
    expected = tuple(scorer.engine.manifest.data_shape)
    splits = {"test": ["test"], "train": ["train"], "all": ["train", "test"]}
    if split not in splits:
        raise UserError(f"unknown --split {split!r}; use test, train or all")
    if out is not None:
        _check_writable(out)

    on_ray = ray or ray_address is not None
    if on_ray and score != "nll":
        raise UserError(f"--ray scores nll only, not {score}; drop --ray for {score}")

    def scored(images: np.ndarray) -> Scores:
        if on_ray:  # the same bound from Ray actors (FILES are read there)
            return _ray_scores(
                engine, images, ray_address, actors, provider, iw_samples, seed, batch
            )
        return scorer.score(images, score, iw_samples, seed, batch, m)

    grouped = score == "typicality" and m > 1
    if files:
        result = scored(files if on_ray else read_image_files(files, expected))
        header = ("first_file", "images", score) if grouped else ("file", score)
        labels = [(str(files[i]),) for i in range(0, len(files), m if grouped else 1)]
        sizes = [min(m, len(files) - i) for i in range(0, len(files), m)] if grouped else None
        rows, results, what = _rows(labels, sizes, result.values), [result], "files"
    else:
        folder = data.startswith("folder:")  # resized and converted like image FILES
        loaded = load_data(data, size=expected[1] if folder else None, channels=expected[0])
        if loaded.shape != expected:
            raise UserError(
                f"{data} holds images of shape {loaded.shape}, the engine expects {expected} "
                "(C, H, W); score data like the model's training data"
            )
        header = ("split", "first_index", "images", score) if grouped else ("split", "index", score)
        rows, results, what = [], [], f"{data} {split}"
        for name in splits[split]:
            images = getattr(loaded, name).images
            result = scored(images)
            starts = range(0, len(images), m if grouped else 1)
            sizes = [min(m, len(images) - i) for i in starts] if grouped else None
            rows += _rows([(name, i) for i in starts], sizes, result.values)
            results.append(result)
    bad = [row for row in rows if not math.isfinite(row[-1])]
    if bad and nonfinite == "error":
        raise UserError(
            f"{len(bad)} of {len(rows)} {score} scores are not finite (first: "
            f"{' '.join(map(str, bad[0][:-1]))} = {bad[0][-1]}); the model overflows on "
            "them: pass --nonfinite drop to leave them out, or keep to write them to the CSV"
        )
    if nonfinite == "drop":
        rows = [row for row in rows if math.isfinite(row[-1])]
    values = np.array([row[-1] for row in rows if math.isfinite(row[-1])])
    if out is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerows([header, *rows])
        _write_text(out, text.getvalue())
    unit = " bits/dim" if score in ("nll", "bpd_density_at_centers", "complexity") else ""
    count = f"{len(rows)} groups of {m} images" if grouped else f"{len(rows)} images"
    mean = "no finite score"
    if len(values):
        stderr = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
        mean = f"{score}{unit} mean {values.mean():.4f} +- {stderr:.4f}"
    notes = [_describe_bound(scorer, results[0])] if results[0].iw_samples is not None else []
    floored = sum(result.floored for result in results)
    if floored:
        notes.append(f"{floored} estimates below 0 raised to 0, as -log P(x) >= 0")
    if bad:
        verb = "dropped" if nonfinite == "drop" else "kept in the CSV, left out of the mean"
        notes.append(f"{len(bad)} non-finite {verb}")
    typer.echo(
        f"{what}: {count}, {mean}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + (f" -> {out}" if out else ""),
        err=out is not None and _is_stdout(out),
    )


def _rows(labels: list[tuple], sizes: list[int] | None, values: np.ndarray) -> list[tuple]:
    if sizes is None:
        return [(*label, float(v)) for label, v in zip(labels, values, strict=True)]
    return [(*label, n, float(v)) for label, n, v in zip(labels, sizes, values, strict=True)]


def _describe_bound(scorer: Scorer, result: Scores) -> str:
    if scorer.exact and not scorer.dequantized:
        return "exact log P(x) of the discrete image"
    if scorer.exact:
        kind = (
            "dequantised variational bound"
            if result.iw_samples == 1
            else f"importance-weighted dequantisation bound, K = {result.iw_samples}"
        )
    else:
        kind = f"IWAE bound, K = {result.iw_samples}"
    return f"bits/dim: {kind}, seed {result.seed}"


@app.command("bench")
def bench_command(
    engine: EngineOption,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,16,256",
    seconds: Annotated[float, typer.Option(help="Timed seconds per batch size.")] = 2.0,
    provider: ProviderOption = "auto",
    cuda_graphs: CudaGraphsOption = False,
) -> None:
    """Samples/s, per-call latency (p50/p90/p99), achieved GFLOP/s and its share
    of the machine's measured float32 matmul peak at each batch size, after a
    warm-up, on random inputs of the engine's shapes (medians of the calls)."""
    loaded = load(engine, provider, cuda_graphs=cuda_graphs)
    try:
        batch_sizes = [int(size) for size in batch.split(",")]
    except ValueError:
        raise UserError(
            f"--batch {batch!r}: use comma-separated whole numbers, e.g. 1,16,256"
        ) from None
    rows = bench(loaded, batch_sizes, seconds)
    try:
        if loaded.onnx_path is None:  # a plan whose source ONNX is not beside it
            raise ValueError(f"{loaded.plan.onnx_file} is not beside the plan")
        flops: int | None = count_flops(loaded.onnx_path)
        cost = f"{flops / 1e6:.4g} MFLOP per sample (2 x MACs of {', '.join(COUNTED_OPS)})"
    except ImportError:  # the base install has no `onnx` to read the graph with
        flops, cost = None, "FLOPs not counted (needs onnx: pip install 'vaeflow[export]')"
    except ValueError as err:  # shapes onnx cannot infer
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
    """The engine file, the provider, then its manifest (or a foreign graph's tensors)."""
    provider = labelled(
        "provider", f"{engine.provider} (compiled in: {', '.join(available_providers())})"
    )
    if engine.manifest is None:  # a foreign graph: only what the graph itself says
        return [
            labelled(
                "engine",
                f"{engine.path}, no vaeflow manifest (bench and run work; sample and "
                "likelihood need one: re-export with `genexport onnx CKPT`)",
            ),
            provider,
            "inputs",
            *tensor_lines(engine.inputs),
            "outputs",
            *tensor_lines(engine.outputs),
        ]
    return [
        labelled("engine", str(engine.path)),
        provider,
        *manifest_lines(engine.manifest),
        *_plan_lines(engine),
    ]


def _plan_lines(engine: Engine) -> list[str]:
    """A TensorRT plan's build facts (its sidecar), or nothing for ONNX."""
    plan = engine.plan
    if plan is None:
        return []
    profile = plan.profile
    return [
        labelled(
            "tensorrt",
            f"{plan.tensorrt}, built on {plan.gpu} (compute capability "
            f"{plan.compute_capability}, hardware compatibility {plan.hardware_compat}), "
            f"{plan.precision}",
        ),
        f"  profile  batch min {profile['min']}, opt {profile['opt']}, max {profile['max']}; "
        f"from {plan.onnx_file} (sha256 {plan.onnx_sha256[:12]}...)",
    ]


def _ray_samples(engine: Path, out: Path, kind: str, address, actors, provider, **options):
    """Sample batches from Ray actors, or None once written as parquet shards."""
    from . import distributed

    distributed.start(address)
    if kind != "parquet":
        return distributed.sample_batches(engine, actors=actors, provider=provider, **options)
    _check_writable(out)
    dataset = distributed.sample_dataset(engine, actors=actors, provider=provider, **options)
    distributed.write_parquet(dataset, out)
    return None


def _ray_scores(engine, images, address, actors, provider, iw_samples, seed, batch) -> Scores:
    """The nll bound in bits/dim from Ray actors (floored at 0 there; the count of
    floored values is not gathered)."""
    from . import distributed
    from .scorer import Scores

    distributed.start(address)
    values = distributed.score(
        engine, images, iw_samples, seed, batch, actors=actors, provider=provider
    )
    return Scores("nll", values, int((~np.isfinite(values)).sum()), 0, iw_samples, seed)


def _output_kind(out: Path) -> str:
    if out.suffix.lower() == ".parquet":
        return "parquet"
    if out.suffix.lower() in (".png", ".npz"):
        return out.suffix.lower()[1:]
    if is_stream(out):
        return "npz"  # a pipe or device (/dev/stdout): the array, streamed
    if out.suffix:
        raise UserError(
            f"--out {out}: use a .png grid, an .npz file, a folder or (with --ray) DIR.parquet"
        )
    return "dir"


def _check_writable(out: Path) -> None:
    """Fail before the work, not after: the folder must exist or be creatable."""
    if is_stream(out):
        return  # a pipe or device is written into where it is, not beside it
    folder = resolve_target(out).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {folder} ({err.strerror}); pick a writable --out") from None
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder} is not writable; pick a writable --out")


def _is_stdout(out: Path) -> bool:
    """Whether `out` is this process's stdout: the summary then goes to stderr."""
    try:
        return os.path.samestat(os.stat(out), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def _write_dir(out: Path, batches) -> None:
    """One PNG per sample, streamed batch by batch into a hidden folder that is
    renamed to `out` only when complete."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder; pick a new --out")
    try:
        with atomic_folder(out) as tmp:
            index = 0
            for batch in batches:
                for image in batch:
                    picture = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
                    Image.fromarray(picture).save(tmp / f"{index:06d}.png")
                    index += 1
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); pick a writable --out") from None


def _write_npz_spooled(out: Path, batches, manifest) -> None:
    """An npz of however many rows `batches` yields: the rows go to an
    anonymous temporary file beside `out` first (bounded memory), then into
    the streamed npz, whose header needs the row count."""
    row_shape = tuple(manifest.data_shape)
    row_bytes = math.prod(row_shape)
    with tempfile.TemporaryFile(dir=out.parent) as spool:
        rows = 0
        for batch in batches:
            spool.write(np.ascontiguousarray(batch).tobytes())
            rows += len(batch)

        def replay():
            spool.seek(0)
            per_read = max(1, (64 << 20) // row_bytes)  # 64 MiB at a time
            for start in range(0, rows, per_read):
                count = min(per_read, rows - start)
                data = spool.read(count * row_bytes)
                yield np.frombuffer(data, np.uint8).reshape(count, *row_shape)

        write_npz_stream(out, IMAGES, replay(), (rows, *row_shape))


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
