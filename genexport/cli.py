"""`genexport`: gentrain checkpoints -> verified, self-contained ONNX engines.

genexport onnx runs/demo/checkpoint.pt                  # every graph of the family
genexport onnx CKPT --graphs density --precision fp16   # float16 inside, float32 outside
genexport verify runs/demo/demo.density.onnx --ckpt runs/demo/checkpoint.pt
genexport info runs/demo/demo.generate.onnx
genexport tensorrt runs/demo/checkpoint.pt --precision fp16   # TensorRT plans (GPU)
genexport triton runs/demo/checkpoint.pt --out model_repository
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from genrun.describe import describe, file_size, parity_text
from genrun.errors import run_cli
from genrun.manifest_io import read_from_onnx, to_json

from .export import ExportedGraph, export_checkpoint, verify_engine
from .graphs import exportable, roles
from .onnx import OPSETS
from .precision import MIN_SPEEDUP
from .tensorrt import PlanOptions, export_plans

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

Checkpoint = Annotated[Path, typer.Argument(help="checkpoint.pt written by `gentrain fit`.")]
EnginePath = Annotated[Path, typer.Argument(help="An .onnx engine written by `genexport onnx`.")]


@app.command("onnx")
def onnx_command(
    checkpoint: Checkpoint,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the engines (default: the checkpoint's).")
    ] = None,
    graphs: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated roles (default: all of the family's): "
            + "; ".join(f"{family}: {','.join(roles(family))}" for family in exportable())
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help=f"ONNX opset, one of {OPSETS}.")] = OPSETS[0],
    precision: Annotated[
        str,
        typer.Option(
            help="fp32; fp16 (float16 inside, float32 inputs and outputs; GPUs); or bf16 "
            "(bfloat16 convolutions and matrix products where measured parity allows, the rest "
            "float32; OpenVINO on CPUs with AMX or AVX512-BF16, pip install 'vaeflow[openvino]')."
        ),
    ] = "fp32",
    name: Annotated[
        str | None,
        typer.Option(help="File name stem (default: the run folder's name or the file's stem)."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Training data for the density/elbo manifest's training bits/dim "
            "(typicality score); default: the checkpoint's data spec."
        ),
    ] = None,
    marginal: Annotated[
        bool,
        typer.Option(
            help="Conditional flows: also NAME.marginal.onnx, the density of P(x) = sum_y "
            "P(x|y) p(y) (no label; logsumexp over classes inside the graph) and log P(x|y) "
            "of every class (genrun classify)."
        ),
    ] = False,
    count_unfolded: Annotated[
        bool,
        typer.Option(
            help="Glow: also export each graph without folding ActNorm into the 1x1 "
            "convolutions, only to report its node count (the manifest's nodes_unfolded); "
            "doubles the export time."
        ),
    ] = False,
    bf16_min_speedup: Annotated[
        float,
        typer.Option(
            help="bf16: write an engine only if it runs at least this many times the fp32 "
            "engine's speed on this CPU (measured at export; 0: whatever its speed, e.g. "
            "exported here for a CPU with AMX)."
        ),
    ] = MIN_SPEEDUP,
) -> None:
    """Export NAME.ROLE.onnx engines, verified in ONNX Runtime against PyTorch
    at batch sizes 1, 7 and 64 before anything is written (a conditional
    model's for labels of every class)."""
    engines = export_checkpoint(
        checkpoint,
        out,
        graphs,
        opset,
        precision,
        name,
        data,
        marginal=marginal,
        count_unfolded=count_unfolded,
        bf16_min_speedup=bf16_min_speedup,
    )
    header = ["engine", "size", "nodes", "export"]
    rows = [
        [
            str(engine.path),
            file_size(len(engine.model.SerializeToString())),
            engine.nodes,
            f"{engine.seconds:.1f} s",
        ]
        for engine in engines
    ]
    if count_unfolded:
        header.insert(3, "fp32 nodes before -> after folding")
        for row, engine in zip(rows, engines, strict=True):
            folding = engine.nodes_unfolded, engine.nodes_folded
            row.insert(3, "{} -> {}".format(*folding) if engine.nodes_unfolded else "-")
    _table(header, rows)
    for engine in engines:
        for check in engine.parity:
            typer.echo(f"{engine.path.name}: {parity_text(check)}")
    for engine in engines:
        stats = _training_scores(engine)
        if stats:
            typer.echo(f"{engine.path.name}: {stats}")
    typer.echo(f"all parity checks passed; {engines[0].exporter}, opset {opset}, {precision}")


def _training_scores(engine: ExportedGraph) -> str:
    """What the engine's manifest carries for the typicality score, in words."""
    if engine.training_scores_note:
        return f"no training statistics ({engine.training_scores_note})"
    stats = engine.training_scores
    return "" if stats is None else f"training {stats.summary()}"


@app.command("tensorrt")
def tensorrt_command(
    source: Annotated[
        Path,
        typer.Argument(help="checkpoint.pt (its ONNX engines are exported first) or ENGINE.onnx."),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the plans (default: the source's).")
    ] = None,
    graphs: Annotated[
        str | None, typer.Option(help="With a checkpoint: comma-separated roles (default: all).")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="fp32, or fp16 (built from the fp16 graph; float32 I/O).")
    ] = "fp32",
    opt_batch: Annotated[int, typer.Option(help="Batch TensorRT tunes for.")] = 256,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the profile.")] = 4096,
    workspace_gib: Annotated[float, typer.Option(help="Builder workspace limit, GiB.")] = 4.0,
    timing_cache: Annotated[
        Path | None,
        typer.Option(help="Timing cache read and updated (default: OUT/tensorrt.timing-cache)."),
    ] = None,
    hardware_compat: Annotated[
        str, typer.Option(help="none (this GPU's architecture) or ampere+ (any Ampere or newer).")
    ] = "none",
    name: Annotated[
        str | None, typer.Option(help="With a checkpoint: file name stem, as in `onnx`.")
    ] = None,
) -> None:
    """Build TensorRT NAME.ROLE[.fp16].plan engines (with a .plan.json sidecar)
    from the verified ONNX graphs, checked against ONNX Runtime CPU at batch
    1, 7, opt and max before anything is written. Needs an NVIDIA GPU and
    TensorRT (the package extra "tensorrt")."""
    options = PlanOptions(
        precision, opt_batch, max_batch, workspace_gib, timing_cache, hardware_compat
    )
    plans = export_plans(source, out, graphs, options, name)
    rows = [
        (
            str(plan.path),
            file_size(len(plan.plan)),
            "{min}/{opt}/{max}".format(**plan.info.profile),
            f"{plan.seconds:.1f} s",
        )
        for plan in plans
    ]
    _table(("plan", "size", "batch min/opt/max", "build + check"), rows)
    for plan in plans:
        typer.echo(f"{plan.path.name}: {parity_text(plan.parity)}")
    info = plans[0].info
    typer.echo(
        f"all plan parity checks passed; TensorRT {info.tensorrt} on {info.gpu} "
        f"(compute capability {info.compute_capability}), {precision}"
    )


@app.command("verify")
def verify_command(
    engine: EnginePath,
    ckpt: Annotated[Path, typer.Option(help="The checkpoint the engine was exported from.")],
) -> None:
    """Re-run an engine's parity check against its checkpoint in PyTorch."""
    manifest, check = verify_engine(engine, ckpt)
    typer.echo(f"{engine.name} ({manifest.family} {manifest.role}, {manifest.precision})")
    typer.echo(f"  {parity_text(check)}")
    typer.echo("ok: every output within its bound")


@app.command("triton")
def triton_command(
    sources: Annotated[
        list[Path],
        typer.Argument(
            help="A checkpoint.pt (its engines are exported first), or .onnx engines and "
            "TensorRT .plan files (with their .plan.json sidecars)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The Triton model repository to add models to.")],
    max_batch: Annotated[
        int, typer.Option(help="max_batch_size of ONNX models (a plan's is its profile max).")
    ] = 256,
    instances: Annotated[int, typer.Option(help="Model instances (instance_group count).")] = 1,
    kind: Annotated[str, typer.Option(help="Where ONNX instances run: auto, cpu or gpu.")] = "auto",
    queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batching: longest wait to fill a batch, microseconds.")
    ] = 100,
) -> None:
    """Write a Triton Inference Server model repository, one model per engine:
    NAME-ROLE/config.pbtxt and NAME-ROLE/1/model.onnx (or model.plan)."""
    from .triton import triton_model, write_repository

    with tempfile.TemporaryDirectory(prefix="genexport-triton-") as exported:
        engines = []
        for source in sources:
            if source.suffix == ".pt":
                engines += [e.path for e in export_checkpoint(source, Path(exported))]
            else:
                engines.append(source)
        models = [triton_model(e, max_batch, instances, kind, queue_delay_us) for e in engines]
        for folder in write_repository(models, out):
            typer.echo(f"{folder}/config.pbtxt")
    typer.echo(f"{len(models)} models in {out}; serve with `tritonserver --model-repository {out}`")


@app.command("info")
def info_command(
    engine: EnginePath,
    json_out: Annotated[bool, typer.Option("--json", help="Print the raw manifest JSON.")] = False,
) -> None:
    """Print an engine's manifest: tensors, pixel mapping, provenance, parity."""
    manifest = read_from_onnx(engine)
    if json_out:
        typer.echo(to_json(manifest))
        return
    for line in describe(engine, manifest):
        typer.echo(line)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [header, *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def main() -> None:
    run_cli(app, "genexport", extra="export")
