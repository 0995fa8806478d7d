"""`gentrain figures`: the lecture's numerical illustrations in one run.

AE and VAE with k = 2 (MLPs) on a 1,000-image training subset, as in the
lecture, then Glow and the hierarchical VAE on the whole training split, each
within its share of one training budget; every picture through
`gentrain.plots`, and DIR/index.md with the pictures and the numbers behind
them. Each model is trained by the shared `Trainer`, set up as `gentrain fit`
sets up a fresh run, and keeps its run folder under DIR/runs/, so any
picture can be redrawn with `gentrain plot`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genrun.atomic import write_atomic
from genrun.errors import UserError
from genrun.readers import DataSplit, ImageSet, load_data

from .evaluate import evaluate_images
from .models import FAMILIES, GenerativeModel, new_model
from .plots import make_plot
from .train import CHECKPOINT_NAME, TrainConfig, Trainer, pick_device

SUBSET = 1000  # training images of the AE and VAE, as in the lecture


@dataclass(frozen=True)
class Run:
    """One model of the lecture: its family, config and share of the budget."""

    family: str  # also its run folder under DIR/runs/
    model_options: dict
    share: float  # of the training budget
    epochs: int  # the length when the budget does not stop it first
    subset: int | None = None  # training images; None: the whole training split
    iw_samples: int = 1  # importance samples of the test NLL (VAEs)
    smoke: dict = field(default_factory=dict)  # tiny-model options of --smoke runs

    @property
    def label(self) -> str:
        """How the pictures name it: its family's label (its name if not installed)."""
        cls = FAMILIES.get(self.family)
        return cls.label if cls else self.family


# The lecture trains its AE and VAE for 1,000 epochs on 1,000 images (about
# 31,000 steps at batch 32, a minute or two here); the budget stops Glow and the HVAE.
MLP_K2 = {"latent_dim": 2, "arch": "mlp"}
RUNS = (
    Run("ae", MLP_K2, 0.1, 1000, SUBSET, smoke={"hidden": 16}),
    Run("vae", MLP_K2, 0.1, 1000, SUBSET, iw_samples=1000, smoke={"hidden": 16}),
    Run("glow", {"levels": 2, "depth": 8, "hidden": 64}, 0.5, 200, smoke={"depth": 1, "hidden": 8}),
    Run("hvae", {}, 0.3, 200, iw_samples=100, smoke={"hidden": 8, "groups": 2}),
)
SMOKE_STEPS, SMOKE_IW_SAMPLES = 3, 2


@dataclass(frozen=True)
class Picture:
    kind: str
    runs: tuple[str, ...]  # families of the runs drawn (side by side when two)
    file: str
    title: str
    caption: str


PICTURES = (
    Picture(
        "reconstructions",
        ("ae", "vae"),
        "reconstructions.png",
        "AE vs VAE: reconstructions",
        "The same test images through the AE and the VAE (decoder means), k = 2.",
    ),
    Picture(
        "latent-scatter",
        ("ae", "vae"),
        "latent-scatter.png",
        "2-D latent code of test images",
        "AE codes f(x) and VAE encoder means mu(x) of (up to) 256 test images, by label.",
    ),
    Picture(
        "manifold",
        ("vae",),
        "manifold-vae.png",
        "VAE: learned manifold",
        "Evenly spaced quantiles through the inverse Gaussian CDF, decoded "
        "(Kingma & Welling 2014, fig. 4).",
    ),
    Picture(
        "manifold",
        ("ae",),
        "manifold-ae.png",
        "AE: decoded grid of codes",
        "The AE has no prior: the grid spans the quantiles of its test codes.",
    ),
    Picture(
        "interpolation",
        ("vae",),
        "interpolation-vae.png",
        "VAE: interpolation between real test images",
        "Encoder means of two test images, interpolated linearly and decoded.",
    ),
    Picture(
        "temperature",
        ("glow",),
        "temperature-glow.png",
        "Glow: effect of the temperature",
        "Samples at T = 0, 0.25, 0.6, 0.7, 0.8, 0.9, 1.0 from the same noise.",
    ),
    Picture(
        "interpolation",
        ("glow",),
        "interpolation-glow.png",
        "Glow: linear interpolation in latent space between real images",
        "Both images through the flow (inference), each level's latent "
        "interpolated, back through the flow (generation).",
    ),
    Picture(
        "hvae-levels",
        ("hvae",),
        "hvae-levels.png",
        "HVAE: sample all levels / fixed z1 / fixed z1 and z2",
        "Held groups take one draw shared by every sample; the rest are drawn per sample.",
    ),
)


@dataclass
class Trained:
    run: Run
    options: dict  # the model options besides the data shape
    model: GenerativeModel
    steps: int
    seconds: float
    train_images: int
    metrics: dict[str, dict[str, float]]
    iw_samples: int


def make_figures(
    spec: str,
    out: Path,
    budget_minutes: float = 22.0,
    steps: int | None = None,
    test_images: int = 1000,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    smoke: bool = False,
    echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> Path:
    """Train every model within its share of `budget_minutes` (and at most
    `steps` steps each, when given), draw every picture, write DIR/index.md.
    `smoke` checks the pipeline in seconds: tiny models, 3 steps, K = 2."""
    if budget_minutes <= 0 or (steps is not None and steps < 1) or test_images < 1:
        raise UserError("--budget-minutes, --steps and --test-images must be positive")
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} already holds files; pass --overwrite or another --out")
    data = load_data(spec, seed=seed)
    test = _first(data.test, test_images)
    trained: dict[str, Trained] = {}
    for run in RUNS:
        if run.family not in FAMILIES:
            echo(f"figures: skipping {run.label}: no {run.family} family in this gentrain")
            continue
        minutes = budget_minutes * run.share
        echo(f"figures: training {run.label} for at most {minutes:.1f} min")
        trained[run.family] = _train(run, data, test, out, minutes, steps, seed, device, smoke)
    drawn = []
    for picture in PICTURES:
        models = [(trained[k].run.label, trained[k].model) for k in picture.runs if k in trained]
        if not models:
            continue
        make_plot(picture.kind, models, test, out / picture.file, seed=seed)
        drawn.append(picture)
        echo(f"figures: wrote {out / picture.file}")
    index = out / "index.md"
    command = f"gentrain figures --data {spec} --budget-minutes {budget_minutes:g}"
    if steps is not None:
        command += f" --steps {steps}"
    if smoke:
        command += " --smoke"
    write_atomic(index, _index(spec, data, test, trained, drawn, command).encode())
    return index


def _first(images: ImageSet, n: int) -> ImageSet:
    labels = None if images.labels is None else images.labels[:n]
    return ImageSet(images.images[:n], labels)


def _subset(images: ImageSet, n: int, seed: int) -> ImageSet:
    """A seeded subset of n training images (all when there are fewer)."""
    if n >= len(images.images):
        return images
    index = np.sort(np.random.default_rng(seed).choice(len(images.images), n, replace=False))
    return ImageSet(images.images[index], None if images.labels is None else images.labels[index])


def _train(
    run: Run,
    data: DataSplit,
    test: ImageSet,
    out: Path,
    minutes: float,
    steps: int | None,
    seed: int,
    device: str,
    smoke: bool,
) -> Trained:
    """A fresh run as `gentrain fit` starts one: the family's train_defaults
    under the run's own options, flows at the data's bit depth."""
    train = data.train if run.subset is None else _subset(data.train, run.subset, seed)
    split = DataSplit(train=train, test=test, spec=data.spec, bits=data.bits)
    options = {**FAMILIES[run.family].train_defaults, "epochs": run.epochs}
    # Test metrics are computed once at the end, below; the trainer evaluates then too.
    options.update(data=data.spec, minutes=minutes, seed=seed, device=device)
    options.update(eval_every=10**9, ckpt_every=10**9, log_every=500)
    if smoke:
        steps = steps or SMOKE_STEPS
    if steps is not None:
        options["steps"] = steps
    config = TrainConfig(**options)
    chosen = {**run.model_options, **(run.smoke if smoke else {})}
    run_dir = out / "runs" / run.family
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh log, as fit --overwrite
    model = new_model(run.family, chosen, data, seed)
    started = time.perf_counter()
    trainer = Trainer(model, split, config, run_dir)
    trainer.fit()
    seconds = time.perf_counter() - started
    model = trainer.final_model.eval()
    model.fit_baselines(torch.as_tensor(train.images))
    torch.manual_seed(seed)
    iw_samples = min(run.iw_samples, SMOKE_IW_SAMPLES) if smoke else run.iw_samples
    metrics = evaluate_images(model, test.images, 256, pick_device(device), iw_samples=iw_samples)
    return Trained(
        run, chosen, model, trainer.step, seconds, len(train.images), metrics, iw_samples
    )


def _index(
    spec: str,
    data: DataSplit,
    test: ImageSet,
    trained: dict[str, Trained],
    drawn: list[Picture],
    command: str,
) -> str:
    lines = [
        "# The lecture's figures",
        "",
        f"Written by `{command}`: data `{spec}`, {len(test.images):,} test images. "
        f"The AE and VAE train on a seeded subset of (at most) {SUBSET:,} training images "
        "(as in the lecture), Glow and the HVAE on the whole training split "
        f"({len(data.train.images):,} images). Metrics are means +- standard errors over "
        "the test images: MSE summed over pixels in [0, 1]; -ELBO and NLL (importance "
        "sampled, K draws) in nats; bits/dim. Every checkpoint is in `runs/NAME/`; redraw "
        "a picture with `gentrain plot KIND runs/NAME/checkpoint.pt --out FILE.png`.",
        "",
        "| model | config | train images | steps | training time | test metrics |",
        "|---|---|---|---|---|---|",
    ]
    for t in trained.values():
        config = ", ".join(f"{k} {v}" for k, v in t.options.items()) or "defaults"
        metrics = "; ".join(
            f"{name} {value['mean']:.3f} +- {value['stderr']:.3f}"
            for name, value in t.metrics.items()
        )
        if t.iw_samples > 1:
            metrics += f" (K = {t.iw_samples})"
        lines.append(
            f"| {t.run.label} (`runs/{t.run.family}/{CHECKPOINT_NAME}`) | {config} | "
            f"{t.train_images:,} | {t.steps:,} | {t.seconds:.0f} s | {metrics} |"
        )
    missing = [run.label for run in RUNS if run.family not in trained]
    if missing:
        lines += ["", f"Not trained (family missing from this gentrain): {', '.join(missing)}."]
    for picture in drawn:
        shown = [trained[k] for k in picture.runs if k in trained]
        lines += [
            "",
            f"## {picture.title}",
            "",
            f"![{picture.title}]({picture.file})",
            "",
            f"{picture.caption} {_numbers(shown)}.",
        ]
    return "\n".join(lines) + "\n"


def _numbers(runs: list[Trained]) -> str:
    """The headline test metric of each model a picture shows."""
    parts = []
    for t in runs:
        headline = t.model.headline_metric
        value = t.metrics.get(headline, {}).get("mean", math.nan)
        parts.append(f"{t.run.label}: test {headline} {value:.3f} after {t.steps:,} steps")
    return "; ".join(parts)
