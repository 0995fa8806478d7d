"""`genrun`: sample from and score with exported engines, without PyTorch.

genrun sample --engine runs/demo/demo.generate.onnx --n 64 --out grid.png
genrun likelihood --engine runs/demo/demo.density.onnx --data digits --out scores.csv
genrun sample --engine builtin:mnist-glow --label 7 --n 64 --out sevens.png   # ships with genrun
genrun classify --engine builtin:mnist-glow --data digits --out classes.csv
genrun models                                                                 # what ships
genrun bench --engine runs/demo/demo.generate.onnx --batch 1,16,256
genrun info --engine runs/demo/demo.generate.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .bench import bench, bench_table
from .builtin import builtin_table
from .class_table import ClassTable
from .describe import describe
from .engine import PROVIDERS, load
from .errors import UserError, run_cli
from .labels import check_label_options, class_words, image_labels
from .manifest import DENSITY, GENERATE
from .nonfinite import NonFinite
from .outputs import check_writable, is_stdout, write_csv, write_samples
from .ray_cluster import PARQUET, cli_samples, cli_scores
from .readers import DATA_SPECS_HELP
from .sampler import draw
from .score_inputs import images_to_score
from .score_table import ScoreTable
from .scorer import Scorer, Scores

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

EngineOption = Annotated[
    Path,
    typer.Option(
        "--engine",
        help="An .onnx engine (`genexport onnx`), a TensorRT .plan (`genexport tensorrt`) or "
        "builtin:NAME, an engine that ships with genrun (`genrun models`).",
    ),
]
LabelFromOption = Annotated[
    str | None,
    typer.Option(
        help="Conditional engines: score log P(x|y) with one class (name or index) per image "
        "from FILE (a line each, or the last CSV column; or .npy), or 'data': the labels of "
        "--data."
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
    label: Annotated[
        str | None,
        typer.Option(
            help="Conditional engines: the class of every sample (a name or an index), or "
            "'all': N samples of each class, one grid row per class, the same noise in every "
            "row. Default: class i mod K for sample i."
        ),
    ] = None,
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
    """Draw uint8 samples from a generate or decode engine (glow, vae, ...); of
    a class with --label where the engine is conditional."""
    loaded = load(engine, provider, cuda_graphs=cuda_graphs, role=GENERATE)
    # Lazy: the arguments are checked now, and the output before anything is drawn.
    batches = draw(
        loaded, n, label, temperature=temperature, seed=seed, batch_size=batch,
        fixed_levels=fixed_levels, nonfinite=nonfinite,
    )  # fmt: skip
    if ray or ray_address or out.suffix.lower() == PARQUET:
        output = cli_samples(
            batches, out, ray_address, engine=loaded.path, n=n, temperature=temperature,
            seed=seed, batch_size=batch, fixed_levels=fixed_levels, actors=actors,
            provider=provider,
        )  # fmt: skip
        if output is None:
            typer.echo(f"{n} samples (Ray, T = {temperature:g}, seed {seed}) -> {out}")
            return
    else:
        # A bar on a terminal's stderr; click draws nothing when stderr is not a tty.
        with typer.progressbar(length=batches.calls, file=sys.stderr) as bar:
            output = write_samples(out, batches, bar.update)
    written = batches.n - (batches.nonfinite if batches.policy == "drop" else 0)
    classes = batches.classes
    of = "" if classes is None else class_words(loaded.manifest, classes, n)
    typer.echo(
        f"{written} samples{of} ({loaded.provider}, T = {temperature:g}, seed {seed}) -> {out}",
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
    label_from: LabelFromOption = None,
    marginal: Annotated[
        bool,
        typer.Option(
            help="Conditional engines: score P(x) = sum_y P(x|y) p(y), no label needed (the "
            "marginal density engine, `genexport onnx --marginal`; builtin ones are)."
        ),
    ] = False,
    provider: ProviderOption = "auto",
    ray: RayOption = False,
    ray_address: RayAddressOption = None,
    actors: ActorsOption = 2,
) -> None:
    """Per-image scores and their mean; high values flag out-of-distribution
    images. The default, nll, is a bound on -log2 P(x) / D for the discrete image
    (density engines: dequantised with seeded uniform offsets; elbo engines: IWAE
    with K draws), never negative. A conditional engine scores P(x|y) with
    --label-from, or the marginal P(x) with --marginal."""
    if (data is None) == (not files):
        raise UserError("pass either image FILES or --data SPEC (one of the two) to score")
    nonfinite = NonFinite(nonfinite)  # before any work: a one-line error for another name
    scorer = Scorer(load(engine, provider, role=DENSITY))
    check_label_options(scorer, label_from, marginal, data)
    expected = tuple(scorer.engine.manifest.data_shape)
    if out is not None:
        check_writable(out)

    on_ray = ray or ray_address is not None
    if on_ray and score != "nll":
        raise UserError(f"--ray scores nll only, not {score}; drop --ray for {score}")

    def scored(images: np.ndarray | list[Path], labels: np.ndarray | None) -> Scores:
        if on_ray:  # the same bound from Ray actors (FILES are read there)
            return cli_scores(
                scorer.engine.path, images, ray_address, iw_samples=iw_samples, seed=seed,
                batch_size=batch, actors=actors, provider=provider, labels=labels,
            )  # fmt: skip
        return scorer.score(images, score, iw_samples, seed, batch, m, labels=labels)

    group = m if score == "typicality" else 1
    parts = images_to_score(files, data, split, expected, on_ray)
    labels = image_labels(scorer.engine.manifest, label_from, parts)
    table = ScoreTable(score, parts[0].keys, group)
    for part, part_labels in zip(parts, labels, strict=True):
        table.add(part.rows, scored(part.images, part_labels))
    what = parts[0].what
    table.apply(nonfinite)
    if out is not None:
        write_csv(out, table.csv_rows())
    typer.echo(
        table.summary(what, scorer) + (f" -> {out}" if out else ""),
        err=out is not None and is_stdout(out),
    )


@app.command("classify")
def classify_command(
    engine: EngineOption,
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="Image files (PNG/JPEG) to classify, of the engine's image size."),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help=f"Images to classify instead of FILES: {DATA_SPECS_HELP}.")
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="With --data: test, train or all (default: test; folder:DIR all)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="CSV: the image's keys (file, or split and index), its class and log p(y|x) "
            "of every class (columns log_p_NAME)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(help="Images per engine call.")] = 256,
    provider: ProviderOption = "auto",
) -> None:
    """The generative classifier of a conditional density engine: per image
    argmax_y P(x|y) p(y) (densities at the bin centres) and log p(y|x) of
    every class; with labelled --data, its accuracy."""
    if (data is None) == (not files):
        raise UserError("pass either image FILES or --data SPEC (one of the two) to classify")
    scorer = Scorer(load(engine, provider, role=DENSITY))
    expected = tuple(scorer.engine.manifest.data_shape)
    if out is not None:
        check_writable(out)
    scorer.check_classifies()
    parts = images_to_score(files, data, split, expected)
    table = ClassTable(scorer.engine.manifest, parts[0].keys)
    for part in parts:
        table.add(part.rows, scorer.classify(part.images, batch), part.labels)
    if out is not None:
        write_csv(out, table.csv_rows())
    typer.echo(
        table.summary(parts[0].what) + (f" -> {out}" if out else ""),
        err=out is not None and is_stdout(out),
    )


@app.command("models")
def models_command() -> None:
    """The engines that ship with genrun (builtin:NAME): their files and sizes,
    what they were trained on and what they measure (genrun/builtin/README.md)."""
    for line in builtin_table():
        typer.echo(line)


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
    for line in bench_table(loaded, bench(loaded, batch_sizes, seconds)):
        typer.echo(line)


@app.command("info")
def info_command(engine: EngineOption, provider: ProviderOption = "auto") -> None:
    """The engine's model, tensors, provenance and the providers present."""
    loaded = load(engine, provider)
    for line in describe(loaded.path, loaded.manifest, loaded):
        typer.echo(line)


def main() -> None:
    run_cli(app, "genrun")
