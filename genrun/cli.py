"""`genrun`: sample from and score with exported engines, without PyTorch.

genrun sample --engine runs/demo/demo.generate.onnx --n 64 --out grid.png
genrun likelihood --engine runs/demo/demo.density.onnx --data digits --out scores.csv
genrun bench --engine runs/demo/demo.generate.onnx --batch 1,16,256
genrun info --engine runs/demo/demo.generate.onnx
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .bench import bench
from .describe import describe
from .engine import PROVIDERS, load
from .errors import UserError, run_cli
from .flops import COUNTED_OPS, count_flops, matmul_peak_gflops
from .nonfinite import check_policy
from .outputs import SampleOutput, check_writable, is_stdout, write_csv
from .readers import (
    DATA_SPECS_HELP,
    TEST_FRACTION,
    folder_of,
    load_data,
    read_image_files,
    read_named_folder,
    split_indices,
)
from .sampler import SampleBatches, Sampler
from .score_table import ScoreTable
from .scorer import Scorer, Scores

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

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
    # Checks the arguments and the output before anything is sampled or written.
    batches = sampler.batches(n, temperature, seed, batch, fixed_levels, nonfinite)
    row_shape = tuple(sampler.engine.manifest.data_shape)
    output = SampleOutput(out, n, row_shape, counted_at_end=nonfinite == "drop")
    if ray or ray_address or output.kind == "parquet":  # the same samples, made by Ray actors
        if nonfinite != "error":
            raise UserError(
                f"--nonfinite {nonfinite} is not supported with Ray yet (its actors refuse "
                "non-finite samples); drop --ray, or keep the default --nonfinite error"
            )
        from .ray_cluster import cli_samples

        chunks = cli_samples(
            engine, out, output.kind, ray_address, actors=actors, provider=provider, n=n,
            temperature=temperature, seed=seed, batch_size=batch, fixed_levels=fixed_levels,
        )  # fmt: skip
        if chunks is None:  # written as parquet shards
            typer.echo(f"{n} samples (Ray, T = {temperature:g}, seed {seed}) -> {out}")
            return
        batches = SampleBatches.of_finite(chunks, n)
    # A bar on a terminal's stderr; click draws nothing when stderr is not a tty.
    with typer.progressbar(batches, length=math.ceil(n / batch), file=sys.stderr) as progress:
        output.write(progress, batches.summary)
    written = n - (batches.nonfinite if nonfinite == "drop" else 0)
    typer.echo(
        f"{written} samples ({sampler.engine.provider}, T = {temperature:g}, seed {seed}) -> {out}",
        err=output.to_stdout,
    )
    if batches.nonfinite:
        typer.echo(f"warning: {batches.summary()}", err=True)


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
    split: Annotated[
        str | None,
        typer.Option(
            help="With --data: test, train or all (default: test; for folder:DIR all, every "
            "image in file order; its test and train are the split gentrain makes with --seed 0)."
        ),
    ] = None,
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
            help="CSV of per-image scores: file, SCORE (FILES, or a folder:DIR with the path "
            "relative to DIR) or split, index, SCORE (other --data); typicality with --m > 1: "
            "one row per group."
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
    check_policy(nonfinite)
    scorer = Scorer(load(engine, provider))
    expected = tuple(scorer.engine.manifest.data_shape)
    splits = {"test": ["test"], "train": ["train"], "all": ["train", "test"]}
    if split is not None and split not in splits:
        raise UserError(f"unknown --split {split!r}; use test, train or all")
    if out is not None:
        check_writable(out)

    on_ray = ray or ray_address is not None
    if on_ray and score != "nll":
        raise UserError(f"--ray scores nll only, not {score}; drop --ray for {score}")

    def scored(images: np.ndarray | list[Path]) -> Scores:
        if on_ray:  # the same bound from Ray actors (FILES are read there)
            from .ray_cluster import cli_scores

            return cli_scores(
                engine, images, ray_address, iw_samples=iw_samples, seed=seed,
                batch_size=batch, actors=actors, provider=provider,
            )  # fmt: skip
        return scorer.score(images, score, iw_samples, seed, batch, m)

    group = m if score == "typicality" else 1
    if files:
        table, what = ScoreTable(score, ("file",), group), "files"
        table.add(
            [(str(f),) for f in files],
            scored(files if on_ray else read_image_files(files, expected)),
        )
    elif (folder := folder_of(data)) is not None:  # a user's images: each row names its file
        names, images = read_named_folder(folder, expected[1], expected[0])
        _check_shape(data, images.shape[1:], expected)
        if split in ("train", "test"):  # the part gentrain trained or tested on
            chosen = split_indices(len(names), TEST_FRACTION, seed=0)[split == "test"]
            names, images = [names[i] for i in chosen], images[chosen]
        table, what = ScoreTable(score, ("file",), group), f"{data} {split or 'all'}"
        table.add([(name,) for name in names], scored(images))
    else:
        loaded = load_data(data, channels=expected[0])
        _check_shape(data, loaded.shape, expected)
        table, what = ScoreTable(score, ("split", "index"), group), f"{data} {split or 'test'}"
        for name in splits[split or "test"]:
            images = getattr(loaded, name).images
            table.add([(name, i) for i in range(len(images))], scored(images))
    table.apply(nonfinite)
    if out is not None:
        write_csv(out, table.csv_rows())
    typer.echo(
        table.summary(what, scorer) + (f" -> {out}" if out else ""),
        err=out is not None and is_stdout(out),
    )


def _check_shape(data: str, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if tuple(shape) != expected:
        raise UserError(
            f"{data} holds images of shape {tuple(shape)}, the engine expects {expected} "
            "(C, H, W); score data like the model's training data"
        )


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
    # The share of peak compares like with like only on the CPU, and with the
    # matmul of the engine's precision (bf16 engines: OpenVINO's bf16 MatMul).
    reduced = loaded.manifest is not None and loaded.manifest.precision == "bf16"
    peak_name = "OpenVINO bfloat16" if reduced else "numpy float32"
    if loaded.provider != "cpu":
        peak = None
    elif reduced:
        from .backends.openvino import bf16_matmul_peak_gflops

        peak = bf16_matmul_peak_gflops(loaded.threads)
    else:
        peak = matmul_peak_gflops(loaded.threads)
    manifest = loaded.manifest
    what = (
        f"{loaded.path.name} (no vaeflow manifest)"
        if manifest is None
        else f"{manifest.family} {manifest.role} ({manifest.precision})"
    )
    runtime = " (openvino)" if loaded.backend == "openvino" else ""
    typer.echo(f"{what} on {loaded.provider}{runtime}, {loaded.threads} threads")
    plan = None if loaded.manifest is None else loaded.manifest.precision_plan
    if plan is not None:
        typer.echo(
            f"precision bf16: {len(plan.reduced_layers)} layers in bfloat16 "
            f"({plan.reduced_flop_share:.0%} of the FLOPs), {len(plan.float32_layers)} kept float32"
        )
    typer.echo(
        cost
        + ("" if peak is None else f"; {peak_name} matmul peak {peak:.1f} GFLOP/s, same threads")
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
    for line in describe(loaded.path, loaded.manifest, loaded):
        typer.echo(line)


def main() -> None:
    run_cli(app, "genrun")
