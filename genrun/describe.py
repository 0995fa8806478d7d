"""An engine in aligned, readable lines: the one printer behind `genrun
info` (a loaded engine: the provider that runs it too) and `genexport info`
(the file's manifest), and the parity lines `genexport onnx` prints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .manifest import Manifest, Parity, TensorSpec

if TYPE_CHECKING:  # the printer needs no runtime: genexport info loads none
    from .engine import Engine


def describe(path: Path, manifest: Manifest | None, loaded: Engine | None = None) -> list[str]:
    """The engine file and its size; for a `loaded` engine the provider
    running it (and those present); then its manifest, or a foreign graph's
    own tensors; then a TensorRT plan's build facts."""
    lines = [labelled("engine", f"{path} ({file_size(path.stat().st_size)})")]
    if loaded is not None:
        from .engine import available_providers

        present = ", ".join(available_providers())
        lines.append(labelled("provider", f"{loaded.provider} (compiled in: {present})"))
    if manifest is None:  # a foreign graph: only what the graph itself says
        lines[0] += (
            ", no vaeflow manifest (bench and run work; sample and likelihood need one: "
            "re-export with `genexport onnx CKPT`)"
        )
        inputs, outputs = (loaded.inputs, loaded.outputs) if loaded else ([], [])
        return [*lines, "inputs", *tensor_lines(inputs), "outputs", *tensor_lines(outputs)]
    return [*lines, *manifest_lines(manifest), *_plan_lines(loaded and loaded.plan)]


def file_size(n_bytes: int) -> str:
    """'120 KiB' or '3.4 MiB'."""
    return f"{n_bytes / 1024:.0f} KiB" if n_bytes < 1 << 20 else f"{n_bytes / (1 << 20):.1f} MiB"


def labelled(label: str, text: str) -> str:
    """One labelled line, labels in a column of ten."""
    return f"{label:<10} {text}"


def tensor_lines(specs: list[TensorSpec]) -> list[str]:
    """One indented line per tensor: name, dtype, shape, description, default."""
    return [
        f"  {spec.name:<14} {spec.dtype:<8} {_shape(spec.shape):<18} {spec.description}"
        + ("" if spec.default is None else f" (default {spec.default:g})")
        for spec in specs
    ]


def parity_text(check: Parity) -> str:
    """A parity check in words: what was compared, at which batch sizes, how close."""
    batches = ", ".join(str(n) for n in check.batch_sizes)
    errors = ", ".join(
        f"{key} {error:.2g} (<= {check.tolerance[key]:.2g})"
        for key, error in check.max_abs_error.items()
    )
    subject = f"{check.precision} graph vs {check.reference}"
    if check.precision == "bf16":  # figures in the user's terms (genexport.precision)
        return f"{subject} in the user's terms: {errors}"
    return f"{subject} at batch {batches}: max abs error {errors}"


def manifest_lines(manifest: Manifest) -> list[str]:
    """Everything a manifest says: model, tensors, pixels, temperature,
    provenance, export and parity."""
    ckpt, export, pixels = manifest.checkpoint, manifest.export, manifest.pixels
    nodes = f"{export.nodes} nodes"
    if export.nodes_unfolded:  # counted only where the export was asked to
        nodes += (
            f" (float32: {export.nodes_unfolded} before, {export.nodes_folded} after "
            "folding ActNorm into the 1x1 convolutions)"
        )
    elif export.nodes_folded and export.nodes_folded != export.nodes:
        nodes += f" (float32: {export.nodes_folded}, ActNorm folded into the 1x1 convolutions)"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in ckpt.metrics.items()) or "none recorded"
    lines = [
        labelled(
            "model",
            f"{manifest.family} {manifest.role}, {manifest.precision}, "
            f"images {manifest.data_shape}, manifest v{manifest.version}",
        ),
        "inputs",
        *tensor_lines(manifest.inputs),
        "outputs",
        *tensor_lines(manifest.outputs),
        labelled("latents", ", ".join(str(s) for s in manifest.latent_shapes)),
        labelled(
            "pixels",
            f"n_bits {pixels.n_bits}, float images in {pixels.value_range}"
            + (f", {pixels.likelihood}" if pixels.likelihood else ""),
        ),
        f"  from uint8 {pixels.from_uint8}",
        f"  to uint8   {pixels.to_uint8}",
        f"  discretisation term {pixels.discretization_nats:.4f} nats",
    ]
    if manifest.temperature:
        lines.append(labelled("temperature", manifest.temperature))
    if manifest.classes:
        names = [str(c.index if c.name is None else c.name) for c in manifest.classes]
        shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
        lines.append(labelled("classes", f"{len(names)} (conditional): {shown}"))
    if (made := manifest.provenance) is not None:
        results = ", ".join(f"{k} {v:.4g}" for k, v in made.results.items())
        lines += [labelled("made by", made.script), *(f"  $ {c}" for c in made.commands)]
        lines += [f"  data     {made.data}", f"  measured {results}"]
    return [
        *lines,
        labelled("checkpoint", f"{ckpt.file}, sha256 {ckpt.sha256[:16]}..., step {ckpt.step}"),
        f"  test     {metrics}",
        f"  data     {ckpt.data.get('spec', '?')}",
        labelled("export", f"{export.exporter}, opset {export.opset}, {nodes}"),
        f"  versions {', '.join(f'{k} {v}' for k, v in export.versions.items())}",
        *(labelled("parity", parity_text(check)) for check in manifest.parity),
        *([labelled("training", stats.summary())] if (stats := manifest.training_scores) else []),
        *(
            [labelled("bf16 plan", precision_plan_text(plan))]
            if (plan := manifest.precision_plan)
            else []
        ),
    ]


def precision_plan_text(plan) -> str:
    return (
        f"{len(plan.reduced_layers)} layers in bfloat16 ({plan.reduced_flop_share:.0%} of the "
        f"FLOPs), {len(plan.float32_layers)} kept float32"
        + (f" ({', '.join(plan.float32_layers[:4])}...)" if plan.float32_layers else "")
        + f"; runs on {plan.runtime}"
        + ("" if plan.speedup is None else f", {plan.speedup:.2f}x fp32's speed at export")
    )


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _plan_lines(plan) -> list[str]:
    """A TensorRT plan's build facts (its sidecar, genrun.backends.sidecar.PlanInfo),
    or nothing for ONNX."""
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
