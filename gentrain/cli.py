"""`gentrain`: train, evaluate and sample image generative models.

gentrain fit glow                      # Glow on the embedded digits
gentrain fit vae --data mnist:DIR      # a VAE on local MNIST files
gentrain eval runs/glow/checkpoint.pt
gentrain sample runs/glow/checkpoint.pt --n 64 --temperature 0.7
gentrain plot reconstructions runs/ae/checkpoint.pt runs/vae/checkpoint.pt --out recon.png
gentrain figures --data mnist:DIR --out runs/figures   # every figure of the lecture
"""

from __future__ import annotations

import inspect
import json
import signal
import typing
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from genrun.atomic import write_atomic
from genrun.errors import UserError, run_cli
from genrun.images import save_grid
from genrun.labels import parse_label
from genrun.readers import DATA_SPECS_HELP, load_data

from . import ddp
from .checkpoint import evaluation_data, load_checkpoint, model_from_checkpoint
from .evaluate import evaluate_images
from .figures import make_figures
from .models import FAMILIES, build_model, model_class, new_model
from .plots import PLOT_KINDS, make_plot
from .train import CHECKPOINT_NAME, TrainConfig, Trainer, pick_device

# Every option can also come from the environment, named GENTRAIN_COMMAND_OPTION
# (GENTRAIN_FIT_GLOW_STEPS=100, GENTRAIN_EVAL_IW_SAMPLES=10): a flag on the
# command line wins. CI and smoke runs shorten README's commands this way.
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=__doc__,
    context_settings={"auto_envvar_prefix": "GENTRAIN"},
)
fit_app = typer.Typer(
    no_args_is_help=True, help="Train a model: `gentrain fit FAMILY`, one command per family."
)
app.add_typer(fit_app, name="fit")

# The options of `gentrain fit FAMILY` are the fields declared with
# `option(...)` of TrainConfig (shared) and of the family's config (its model),
# so each default and help text is written once, beside its field.
Out = Annotated[Path | None, typer.Option(help="Run folder (default runs/FAMILY).")]
Resume = Annotated[bool, typer.Option(help="Continue the run in --out where it stopped.")]
Overwrite = Annotated[bool, typer.Option(help="Replace a finished or stopped run in --out.")]
Seed = Annotated[int, typer.Option(help="Seed of weights, batches and noise.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
RUN_OPTIONS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, annotation, default in (
        ("out", Out, None),
        ("resume", Resume, False),
        ("overwrite", Overwrite, False),
    )
]


def config_options(config_class: type, family_defaults: dict[str, Any] | None = None) -> list:
    """typer parameters for the `option(...)` fields of a config dataclass, in
    field order. A field in `family_defaults` (or one whose default comes from
    the data) is None on the command line, so that the family or the data decides."""
    hints = typing.get_type_hints(config_class)
    parameters = []
    for field in fields(config_class):
        if "help" not in field.metadata:
            continue
        annotation, default, text = hints[field.name], field.default, field.metadata["help"]
        if family_defaults is not None and field.name in family_defaults:
            annotation, default = annotation | None, None
            value = family_defaults[field.name]
            text += f" (default: {value:g})" if isinstance(value, float) else f" (default: {value})"
        elif field.metadata.get("from_data") or "conditional_default" in field.metadata:
            annotation, default = annotation | None, None
        flags = [field.metadata["flag"]] if field.metadata.get("flag") else []
        parameters.append(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[annotation, typer.Option(*flags, help=text)],
            )
        )
    return parameters


def add_fit_command(family: str) -> None:
    """Register `gentrain fit FAMILY`: the family's model options, then the
    training options, then where the run goes; it trains with `_fit`."""
    cls = model_class(family)
    # A setting any family chooses is None here; `_fit` fills in this family's.
    train_fields = {f.name: f.default for f in fields(TrainConfig)}
    family_defaults = {
        k: cls.train_defaults.get(k, train_fields[k])
        for c in FAMILIES.values()
        for k in c.train_defaults
    }

    def command(**arguments: Any) -> None:
        _fit(family, arguments)

    parameters = [
        *config_options(cls.config_class),
        *config_options(TrainConfig, family_defaults),
        *RUN_OPTIONS,
    ]
    command.__signature__ = inspect.Signature(parameters)  # what typer reads
    command.__doc__ = f"Train {cls.description}."
    fit_app.command(family)(command)


def _fit(family: str, arguments: dict[str, Any]) -> None:
    """Train from a `fit` command's arguments: TrainConfig's fields are
    training options, out/resume/overwrite say where, the rest configure the
    model (named as the family's config fields)."""
    arguments = dict(arguments)
    world = ddp.setup(arguments["device"])  # under torchrun: join the ranks
    out, resume, overwrite = (arguments.pop(k) for k in ("out", "resume", "overwrite"))
    train_fields = {f.name for f in fields(TrainConfig)}
    train_options = {k: v for k, v in arguments.items() if k in train_fields}
    model_options = {k: v for k, v in arguments.items() if k not in train_fields}
    out = out or Path("runs") / family
    checkpoint_path = out / CHECKPOINT_NAME
    if resume:
        payload = load_checkpoint(checkpoint_path)
        if payload["family"] != family:
            raise UserError(
                f"{checkpoint_path} holds a {payload['family']} run; "
                f"resume it with `gentrain fit {payload['family']} --resume`"
            )
        stored = payload["train_config"]
        # On resume only the length may change; every other setting is the run's own.
        if train_options["epochs"] is not None:
            stored.update(epochs=train_options["epochs"], steps=None)
        for key in ("steps", "minutes"):
            if train_options[key] is not None:
                stored[key] = train_options[key]
        config = TrainConfig.from_dict(stored)
        data = load_data(config.data, size=config.size, seed=config.seed)
        model = build_model(family, payload["model_config"])
    else:
        if checkpoint_path.exists() and not overwrite:
            raise UserError(
                f"{out} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or another --out"
            )
        if overwrite and world.is_main:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        defaults = {k: v for k, v in train_options.items() if v is not None}
        config = TrainConfig(**{**model_class(family).train_defaults, **defaults})
        data = load_data(config.data, size=config.size, seed=config.seed)
        model = new_model(family, model_options, data, config.seed)
        payload = None
    n_params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(model, data, config, out, resume=payload)
    typer.echo(
        f"{family}: {n_params:,} parameters, {len(data.train.images)} train / "
        f"{len(data.test.images)} test images of {data.shape}, {trainer.total_steps} steps "
        f"on {trainer.device}" + (f", resuming at step {trainer.step}" if payload else ""),
        err=True,
    )
    try:
        metrics = trainer.fit()
    except KeyboardInterrupt:
        typer.echo(
            f"gentrain: stopped at step {trainer.step}; saved {checkpoint_path}; "
            f"continue with `gentrain fit {family} --resume --out {out}`",
            err=True,
        )
        # 130 after Ctrl-C, 143 after SIGTERM: the shell's 128 + signal number.
        raise typer.Exit(128 + (trainer.stop_signal or signal.SIGINT)) from None
    if not world.is_main:  # rank 0 reports and draws the preview
        return
    model = trainer.final_model
    name, images = model.preview(torch.as_tensor(data.test.images[:64]))
    grid = save_grid(images.cpu().numpy(), out / f"{name}.png", nrow=8, scale=_scale(data.shape))
    summary = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    typer.echo(f"done: test {summary}; skipped {trainer.skipped} non-finite steps")
    typer.echo(f"checkpoint: {checkpoint_path}\n{name}: {grid}")


def _scale(shape: tuple[int, ...]) -> int:
    """Upscale small images in grids so 8x8 digits are visible."""
    return max(1, 64 // shape[-1])


for _family in FAMILIES:
    add_fit_command(_family)


@app.command("eval")
def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt written by `gentrain fit`.")],
    data: Annotated[
        str | None, typer.Option(help=f"Test data (default: the run's own). {DATA_SPECS_HELP}")
    ] = None,
    iw_samples: Annotated[
        int | None,
        typer.Option(
            help="Importance samples K: (H)VAE latents for the NLL bound; flows "
            "dequantisation noise for bpd_iw (1: the standard bound only). Default: "
            + ", ".join(f"{c.family} {c.default_iw_samples}" for c in FAMILIES.values())
            + "."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the evaluation noise.")] = 0,
    device: Device = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the metrics as JSON.")
    ] = None,
) -> None:
    """Test-split metrics: flows bits/dim; VAEs negative ELBO and importance-sampled NLL;
    autoencoders MSE beside PCA's at the same k (fitted on the training split)."""
    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload)
    split = evaluation_data(payload, checkpoint, model, data)
    if iw_samples is None:
        iw_samples = model.default_iw_samples
    if iw_samples < 1:
        raise UserError(f"--iw-samples must be at least 1, got {iw_samples}")
    model.fit_baselines(torch.as_tensor(split.train.images))
    torch.manual_seed(seed)
    metrics = evaluate_images(
        model, split.test, batch_size, pick_device(device), iw_samples=iw_samples
    )
    step = f", step {payload['step']}" if "step" in payload else ""
    count = len(split.test.images)
    typer.echo(f"{model.family} on {split.spec} test split ({count} images){step}:")
    for key, value in metrics.items():
        typer.echo(f"  {key:<12} {value['mean']:10.4f} +- {value['stderr']:.4f}")
    if "accuracy" in metrics:
        typer.echo(
            f"generative classifier argmax_y p(x|y) p(y): test accuracy "
            f"{metrics['accuracy']['mean']:.2%} over {model.num_classes} classes"
        )
    if json_out:
        report = {"checkpoint": str(checkpoint), "data": split.spec, "metrics": metrics}
        try:
            write_atomic(json_out, json.dumps(report, indent=2).encode())
        except OSError as err:
            raise UserError(
                f"cannot write {json_out} ({err.strerror}); pick another --json"
            ) from None


@app.command("sample")
def sample_command(
    checkpoint: Annotated[Path, typer.Argument(help="checkpoint.pt written by `gentrain fit`.")],
    n: Annotated[int, typer.Option(help="Number of samples.")] = 64,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Scale of the latent noise (0: the mode). Default: "
            + ", ".join(
                f"{c.family} {c.default_temperature:g}" for c in FAMILIES.values() if c.has_prior
            )
            + "."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the latent noise.")] = 0,
    out: Annotated[Path, typer.Option(help="PNG grid to write.")] = Path("samples.png"),
    label: Annotated[
        str | None,
        typer.Option(
            help="Conditional models: the class (name or index), or 'all': one row of N "
            "per class, the same noise in every row (default: class i mod K for sample i)."
        ),
    ] = None,
    device: Device = "auto",
) -> None:
    """Draw samples and write them as a PNG grid."""
    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if temperature is not None and temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {temperature}")
    payload = load_checkpoint(checkpoint)
    model = model_from_checkpoint(payload).to(pick_device(device))
    temperature = model.default_temperature if temperature is None else temperature
    if label is not None and not model.num_classes:
        raise UserError(f"{checkpoint} holds a model without classes; drop --label")
    rows = [None]
    if model.num_classes:
        names, count = model.config.class_names, model.num_classes
        rows = parse_label(label, names, count) if label is not None else [None]
    grids = []
    for row in rows:
        torch.manual_seed(seed)  # with --label all, the same noise in every row
        classes = {}
        if model.num_classes:
            classes["label"] = torch.arange(n) % model.num_classes if row is None else row
        grids.append(model.sample(n, temperature, **classes).cpu().numpy())
    images = np.concatenate(grids)
    nrow = n if len(rows) > 1 else None
    save_grid(images, out, nrow=nrow, scale=_scale(images.shape))
    typer.echo(f"wrote {len(images)} samples at temperature {temperature} to {out}")


@app.command("plot")
def plot_command(
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(PLOT_KINDS)}.")],
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="checkpoint.pt; two for reconstructions and latent-scatter (side by side, "
            "on the same test images: e.g. an AE and a VAE)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("plot.png"),
    data: Annotated[
        str | None, typer.Option(help=f"Test images (default: the run's own). {DATA_SPECS_HELP}")
    ] = None,
    n: Annotated[
        int | None,
        typer.Option(
            help="Test images (reconstructions 100, latent-scatter 256), grid side (manifold "
            "20), image pairs (interpolation 6) or samples per row/panel (temperature 8, "
            "hvae-levels 36)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test-image choice and the noise.")] = 0,
    project: Annotated[
        str, typer.Option(help="latent-scatter of codes with k != 2: pca (first two PCs).")
    ] = "none",
    device: Device = "auto",
) -> None:
    """Draw one of the lecture's pictures from checkpoints (matplotlib, PNG)."""
    payloads = [load_checkpoint(path) for path in checkpoints]
    families = [payload["family"] for payload in payloads]
    models = []
    for path, payload in zip(checkpoints, payloads, strict=True):
        label = model_class(payload["family"]).label
        if families.count(payload["family"]) > 1:  # two of a kind: tell them apart
            label += f" ({path.resolve().parent.name})"
        models.append((label, model_from_checkpoint(payload).to(pick_device(device))))
    split = evaluation_data(payloads[0], checkpoints[0], models[0][1], data)
    for path, (_, model) in zip(checkpoints[1:], models[1:], strict=True):
        if split.shape != tuple(model.config.data_shape):
            raise UserError(
                f"{split.spec} has images of shape {split.shape} but {path} was trained on "
                f"{tuple(model.config.data_shape)}; pass --data with matching images"
            )
    written = make_plot(kind, models, split.test, out, n=n, seed=seed, project=project)
    typer.echo(f"wrote {kind} of {', '.join(label for label, _ in models)} to {written}")


@app.command("figures")
def figures_command(
    data: Annotated[str, typer.Option(help=f"Images: {DATA_SPECS_HELP}")] = "digits",
    out: Annotated[Path, typer.Option(help="Folder of the pictures, runs and index.md.")] = (
        Path("runs/figures")
    ),
    budget_minutes: Annotated[
        float,
        typer.Option(
            help="Training time of all models together (AE and VAE 10% each, Glow 50%, "
            "HVAE 30%); evaluation and pictures add about four minutes on 2 CPU cores."
        ),
    ] = 22.0,
    steps: Annotated[
        int | None, typer.Option(help="Stop each model after this many steps (smoke runs).")
    ] = None,
    test_images: Annotated[
        int, typer.Option(help="Test images the figures and pictures use (the first N).")
    ] = 1000,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace the figures in --out.")] = False,
    smoke: Annotated[
        bool, typer.Option(help="Check the pipeline in seconds: tiny models, 3 steps, K = 2.")
    ] = False,
) -> None:
    """Reproduce the lecture's figures: train AE, VAE, Glow and HVAE, draw, write index.md.

    AE and VAE (k = 2, MLPs) on 1,000 training images as in the lecture, Glow and
    the HVAE on the whole split; DIR/index.md shows every picture and its numbers."""
    index = make_figures(
        data,
        out,
        budget_minutes=budget_minutes,
        steps=steps,
        test_images=test_images,
        seed=seed,
        device=device,
        overwrite=overwrite,
        smoke=smoke,
        echo=lambda line: typer.echo(line, err=True),
    )
    typer.echo(f"index: {index}")


def main() -> None:
    run_cli(app, "gentrain", extra="train")
