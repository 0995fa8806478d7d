"""`genexport`: gentrain checkpoints -> verified, self-contained ONNX engines.

genexport onnx runs/demo/checkpoint.pt                  # every graph of the family
genexport onnx CKPT --graphs density --precision fp16   # float16 inside, float32 outside
genexport verify runs/demo/demo.density.onnx --ckpt runs/demo/checkpoint.pt
genexport info runs/demo/demo.generate.onnx
genexport triton runs/demo/checkpoint.pt --out model_repository
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from genrun.errors import run_cli
from genrun.manifest import Manifest, Parity, read_from_onnx, to_json

from .engines import export_checkpoint, verify_engine
from .graphs import ROLES
from .onnx import OPSETS

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
            + "; ".join(f"{family}: {','.join(roles)}" for family, roles in ROLES.items())
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help=f"ONNX opset, one of {OPSETS}.")] = OPSETS[0],
    precision: Annotated[
        str, typer.Option(help="fp32, or fp16 (float16 inside, float32 inputs and outputs).")
    ] = "fp32",
    name: Annotated[
        str | None,
        typer.Option(help="File name stem (default: the run folder's name or the file's stem)."),
    ] = None,
) -> None:
    """Export NAME.ROLE.onnx engines, verified in ONNX Runtime against PyTorch
    at batch sizes 1, 7 and 64 before anything is written."""
    engines = export_checkpoint(checkpoint, out, graphs, opset, precision, name)
    rows = [
        (
            str(engine.path),
            _size(len(engine.model.SerializeToString())),
            engine.nodes,
            "{} -> {}".format(*engine.nodes_folding) if engine.nodes_folding else "-",
            f"{engine.seconds:.1f} s",
        )
        for engine in engines
    ]
    _table(("engine", "size", "nodes", "fp32 nodes before -> after folding", "export"), rows)
    for engine in engines:
        for check in engine.parity:
            typer.echo(f"{engine.path.name}: {_parity(check)}")
    typer.echo(f"all parity checks passed; {engines[0].exporter}, opset {opset}, {precision}")


@app.command("verify")
def verify_command(
    engine: EnginePath,
    ckpt: Annotated[Path, typer.Option(help="The checkpoint the engine was exported from.")],
) -> None:
    """Re-run an engine's parity check against its checkpoint in PyTorch."""
    manifest, check = verify_engine(engine, ckpt)
    typer.echo(f"{engine.name} ({manifest.family} {manifest.role}, {manifest.precision})")
    typer.echo(f"  {_parity(check)}")
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
    for line in describe(manifest, engine):
        typer.echo(line)


def describe(manifest: Manifest, engine: Path) -> list[str]:
    """The manifest as aligned, readable lines."""
    ckpt, export, pixels = manifest.checkpoint, manifest.export, manifest.pixels
    nodes = f"{export.nodes} nodes"
    if export.nodes_unfolded:
        nodes += (
            f" (float32: {export.nodes_unfolded} before, {export.nodes_folded} after "
            "folding ActNorm into the 1x1 convolutions)"
        )
    lines = [
        f"engine       {engine} ({_size(engine.stat().st_size)}), manifest v{manifest.version}",
        f"model        {manifest.family} {manifest.role}, {manifest.precision}, "
        f"images {manifest.data_shape}",
        "inputs",
        *_tensors(manifest.inputs),
        "outputs",
        *_tensors(manifest.outputs),
        f"latents      {', '.join(str(s) for s in manifest.latent_shapes)}",
        f"pixels       n_bits {pixels.n_bits}, float images in {pixels.value_range}"
        + (f", {pixels.likelihood}" if pixels.likelihood else ""),
        f"  from uint8 {pixels.from_uint8}",
        f"  to uint8   {pixels.to_uint8}",
        f"  discretisation term {pixels.discretization_nats:.4f} nats",
    ]
    if manifest.temperature:
        lines.append(f"temperature  {manifest.temperature}")
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in ckpt.metrics.items()) or "none recorded"
    lines += [
        f"checkpoint   {ckpt.file}, sha256 {ckpt.sha256[:16]}..., step {ckpt.step}",
        f"  test       {metrics}",
        f"  data       {ckpt.data.get('spec', '?')}",
        f"export       {export.exporter}, opset {export.opset}, {nodes}",
        f"  versions   {', '.join(f'{k} {v}' for k, v in export.versions.items())}",
        *(f"parity       {_parity(check)}" for check in manifest.parity),
    ]
    return lines


def _tensors(specs) -> list[str]:
    lines = []
    for spec in specs:
        shape = "[" + ", ".join(str(d) for d in spec.shape) + "]"
        default = f" (default {spec.default:g})" if spec.default is not None else ""
        lines.append(f"  {spec.name:<14} {spec.dtype:<8} {shape:<16} {spec.description}{default}")
    return lines


def _parity(check: Parity) -> str:
    batches = ", ".join(str(n) for n in check.batch_sizes)
    errors = ", ".join(
        f"{key} {error:.2g} (<= {check.tolerance[key]:.2g})"
        for key, error in check.max_abs_error.items()
    )
    subject = f"{check.precision} graph vs {check.reference}"
    return f"{subject} at batch {batches}: max abs error {errors}"


def _table(header: tuple[str, ...], rows: list[tuple]) -> None:
    cells = [header, *[tuple(str(c) for c in row) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.0f} KiB" if n_bytes < 1 << 20 else f"{n_bytes / (1 << 20):.1f} MiB"


def main() -> None:
    run_cli(app, "genexport")
