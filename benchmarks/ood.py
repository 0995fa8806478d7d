"""Out-of-distribution detection on MNIST with every score genrun has.

    python benchmarks/ood.py --data mnist:DIR [--runs runs/ood] [--only glow,realnvp,vae]
                             [--steps glow=1200,realnvp=600,vae=13500] [--minutes glow=5]

The figures in benchmarks/results/ood.md are for an 8,000 / 1,000 MNIST subset
(`--data mnist:DIR`); the default, the repository's 500 / 100 test subset
(tests/data/mnist-mini), only checks that the script runs.

Needs scikit-learn beside the [export] extra (`pip install scikit-learn`): two of
the OOD sets come from its bundled photos and digits.

For each model (Glow, RealNVP, VAE) it uses RUNS/FAMILY/checkpoint.pt, training
it first with `gentrain fit FAMILY --steps N` (the family's defaults; a step
budget, so the figures do not depend on the machine's load; `--minutes` trains
by wall-clock time instead) when missing, exports its engines with `genexport
onnx` (which measures the training bits/dim for the typicality score), then
scores MNIST test (in-distribution) and out-of-distribution sets built here,
offline and seeded (300 images each): constant black, white and grey images, uniform noise,
inverted test digits, grey 28x28 patches of scikit-learn's two bundled photos,
and scikit-learn's 8x8 digits upsampled into MNIST's 20x20 box (near OOD).

Scores (genrun's Scorer; higher = more OOD): nll (the bound in bits/dim, the
baseline), complexity (Serra et al. 2020), typicality per image (M = 1) and per
group of 10 (M = 10, Nalisnick et al. 2019), complexity with WebP lossless
instead of PNG (a stronger coder, measured beside), and for flows the old default,
the density at bin centres. Reported: AUROC and FPR at 95% TPR per set and
score (genrun/ood.py). A non-finite score counts as the most OOD (an overflow
flags the image) and is counted in the table. Writes benchmarks/results/ood.md,
keeping the sections of the families not run this time.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from genrun.engine import load
from genrun.ood import auroc, compressed_bits, fpr_at_95_tpr, typicality
from genrun.readers import load_data
from genrun.scorer import Scorer

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
SET_SIZE = 300
GROUP = 10  # M of the batch typicality test
FAR = ("black", "white", "grey", "noise", "inverted", "patches")
ROLE = {"glow": "density", "realnvp": "density", "vae": "elbo"}
SCORES = (
    "nll",
    "complexity",
    "complexity (WebP)",
    "typicality",
    f"typicality M={GROUP}",
    "density at centres",
)


# -- the sets ----------------------------------------------------------------------
def ood_sets(test: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """uint8 (300, 1, 28, 28) images per out-of-distribution set, seeded."""
    rng = np.random.default_rng(seed)
    shape = (SET_SIZE, 1, 28, 28)
    grey_levels = rng.integers(1, 255, SET_SIZE, dtype=np.uint8)
    return {
        "black": np.zeros(shape, np.uint8),
        "white": np.full(shape, 255, np.uint8),
        "grey": np.broadcast_to(grey_levels[:, None, None, None], shape).copy(),
        "noise": rng.integers(0, 256, shape, dtype=np.uint8),
        "inverted": 255 - test[rng.choice(len(test), SET_SIZE, replace=False)],
        "patches": photo_patches(rng),
        "sklearn digits": upsampled_digits(rng),
    }


def photo_patches(rng: np.random.Generator) -> np.ndarray:
    """Grey crops of random size 28..112 px from scikit-learn's two bundled
    photos (china.jpg, flower.jpg), resized to 28x28."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(image).convert("L") for image in load_sample_images().images]
    out = np.empty((SET_SIZE, 1, 28, 28), np.uint8)
    for i in range(SET_SIZE):
        photo = photos[i % len(photos)]
        side = int(rng.integers(28, 113))
        left = int(rng.integers(0, photo.width - side))
        top = int(rng.integers(0, photo.height - side))
        crop = photo.crop((left, top, left + side, top + side))
        out[i, 0] = np.asarray(crop.resize((28, 28), Image.Resampling.BILINEAR))
    return out


def upsampled_digits(rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's 8x8 digits (17 grey levels) scaled to 0..255, resized to
    20x20 and centred in 28x28 as MNIST's digits are: near OOD."""
    from sklearn.datasets import load_digits

    digits = load_digits().images
    chosen = digits[rng.choice(len(digits), SET_SIZE, replace=False)]
    out = np.zeros((SET_SIZE, 1, 28, 28), np.uint8)
    for i, digit in enumerate(chosen):
        small = Image.fromarray(np.round(digit * 255 / 16).astype(np.uint8))
        out[i, 0, 4:24, 4:24] = np.asarray(small.resize((20, 20), Image.Resampling.BILINEAR))
    return out


# -- models ------------------------------------------------------------------------
def engine_of(family: str, runs: Path, data: str, budget: list[str]) -> tuple[Path, str]:
    """The scoring engine of RUNS/FAMILY (trained for `budget`, gentrain fit
    options, and exported here if missing) and what training it took."""
    run = runs / family
    checkpoint = run / "checkpoint.pt"
    python = [sys.executable, "-m"]
    if not checkpoint.exists():
        subprocess.run(
            [*python, "gentrain", "fit", family, "--data", data, *budget, "--out", str(run)],
            check=True,
        )
    engine = run / f"{family}.{ROLE[family]}.onnx"
    if not engine.exists() or engine.stat().st_mtime < checkpoint.stat().st_mtime:
        subprocess.run(
            [*python, "genexport", "onnx", str(checkpoint), "--graphs", ROLE[family],
             "--name", family, "--data", data],
            check=True,
        )  # fmt: skip
    return engine, trained_for(run)


def trained_for(run: Path) -> str:
    import json

    lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    train = [r for r in records if r.get("split") == "train"]
    tests = [r for r in records if r.get("split") == "test"]
    step = train[-1]["step"] if train else 0
    ips = np.mean([r["images_per_s"] for r in train]) if train else float("nan")
    test = {k: v for k, v in tests[-1].items() if k not in ("step", "split")} if tests else {}
    figures = ", ".join(f"{k} {v:.3f}" for k, v in test.items())
    return f"{step} steps at {ips:.0f} images/s; test {figures}"


# -- scoring -----------------------------------------------------------------------
def evaluate(engine_path: Path, test: np.ndarray, sets: dict[str, np.ndarray]):
    """{score: {set: (auroc, fpr95, non-finite count)}} and the mean nll per set.
    The bound is computed once per set; complexity and typicality are derived
    from it exactly as `Scorer.score` derives them (same K and seed)."""
    scorer = Scorer(load(engine_path))
    stats = scorer.training_scores()
    n_bits, dims = scorer.engine.manifest.pixels.n_bits, scorer.dims
    every = {"MNIST test": test, **sets}
    scores: dict[str, dict[str, np.ndarray]] = {label: {} for label in SCORES}
    for name, images in every.items():
        started = time.perf_counter()
        bpd = scorer.bits_per_dim(images, stats.iw_samples, stats.seed)
        scores["nll"][name] = bpd
        scores["complexity"][name] = bpd - compressed_bits(images, n_bits) / dims
        scores["complexity (WebP)"][name] = bpd - webp_bits(images, n_bits) / dims
        scores["typicality"][name] = typicality(bpd, stats.bpd_mean, stats.bpd_std, 1)
        grouped = typicality(bpd, stats.bpd_mean, stats.bpd_std, GROUP)
        scores[f"typicality M={GROUP}"][name] = grouped
        if scorer.exact:
            scores["density at centres"][name] = scorer.bits_per_dim_density_at_centers(images)
        print(f"  {name}: {time.perf_counter() - started:.1f} s", flush=True)
    if not scorer.exact:
        del scores["density at centres"]
    table = {
        label: {name: _judge(values["MNIST test"], values[name]) for name in sets}
        for label, values in scores.items()
    }
    means = {
        name: float(np.nanmean(np.where(np.isfinite(v), v, np.nan)))
        for name, v in scores["nll"].items()
    }
    return table, means


def webp_bits(images: np.ndarray, n_bits: int) -> np.ndarray:
    """L(x) with WebP lossless (method 6, the strongest), the alternative coder
    measured beside genrun's PNG."""
    out = np.empty(len(images))
    for i, image in enumerate(images >> (8 - n_bits)):
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="WEBP", lossless=True, quality=100, method=6)
        out[i] = 8 * buffer.tell()
    return out


def _judge(inside: np.ndarray, outside: np.ndarray) -> tuple[float, float, int]:
    bad = int((~np.isfinite(outside)).sum()) + int((~np.isfinite(inside)).sum())
    a, b = _as_most_ood(inside), _as_most_ood(outside)
    return auroc(a, b), fpr_at_95_tpr(a, b), bad


def _as_most_ood(values: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(values), values, np.inf)


def report(family: str, engine: Path, trained: str, table, means, load_note: str) -> list[str]:
    manifest = load(engine).manifest
    stats = manifest.training_scores
    sets = list(next(iter(table.values())))
    lines = [
        f"## {family} ({manifest.role} engine)",
        "",
        f"Training: `gentrain fit {family}` defaults, {trained}. Typicality statistics "
        f"from export: training bits/dim {stats.bpd_mean:.3f} (std {stats.bpd_std:.3f}) over "
        f"the first {stats.images} training images, K = {stats.iw_samples}. {load_note}",
        "",
        "Mean nll (bits/dim bound) per set: "
        + ", ".join(f"{name} {value:.2f}" for name, value in means.items())
        + ".",
        "",
        "AUROC (FPR at 95% TPR) per set and score; best AUROC per set in bold:",
        "",
        "| set | " + " | ".join(table) + " |",
        "|---|" + "---|" * len(table),
    ]
    for name in sets:
        best = max(table[label][name][0] for label in table)
        cells = []
        for label in table:
            a, f, bad = table[label][name]
            cell = f"{a:.3f} ({f:.2f})"
            cell = f"**{cell}**" if a == best else cell
            cells.append(cell + (f" [{bad} non-finite]" if bad else ""))
        kind = "far" if name in FAR else "near"
        lines.append(f"| {name} ({kind}) | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _per_family(text: str) -> dict[str, str]:
    """'glow=1200,vae=10' -> {'glow': '1200', 'vae': '10'}."""
    return dict(pair.split("=") for pair in text.split(",")) if text else {}


def _sections(markdown: str) -> dict[str, str]:
    """The '## FAMILY (...)' sections of a previous ood.md, by family."""
    parts = markdown.split("\n## ")[1:]
    return {part.split()[0]: "## " + part.rstrip() + "\n" for part in parts}


def _load() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=f"mnist:{ROOT / 'tests' / 'data' / 'mnist-mini'}")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ood")
    parser.add_argument("--steps", default="glow=1200,realnvp=600,vae=13500")
    parser.add_argument("--minutes", default="", help="wall-clock budgets instead, e.g. glow=5")
    parser.add_argument("--only", default="glow,realnvp,vae")
    parser.add_argument("--out", type=Path, default=RESULTS / "ood.md")
    args = parser.parse_args()
    steps, minutes = _per_family(args.steps), _per_family(args.minutes)
    data = load_data(args.data)
    test = data.test.images
    sets = ood_sets(test)
    for family in args.only.split(","):
        print(f"{family}:", flush=True)
        started, load_before = time.perf_counter(), _load()
        if family in minutes:  # --epochs 1000: the time is what stops it
            budget = ["--minutes", minutes[family], "--epochs", "1000"]
        else:
            budget = ["--steps", steps[family]]
        engine, trained = engine_of(family, args.runs, args.data, budget)
        table, means = evaluate(engine, test, sets)
        load_note = (
            f"Load average (1/5/15 min) {load_before} at the start, {_load()} at the end: "
            "timings depend on it"
            + (", the figures do not (a step budget)." if family not in minutes else ".")
        )
        section = report(family, engine, trained, table, means, load_note)
        section.append(
            f"Export and scoring of the {len(test) + len(sets) * SET_SIZE} images took "
            f"{time.perf_counter() - started:.0f} s.\n"
        )
        print("\n".join(section), flush=True)
        # Runs in pieces (one family per command) each keep their section.
        (args.runs / family / "ood.md").write_text("\n".join(section))
    # A family not run here keeps its section of the previous file.
    previous = _sections(args.out.read_text()) if args.out.exists() else {}
    sections = [
        (args.runs / family / "ood.md").read_text()
        if (args.runs / family / "ood.md").exists()
        else previous[family]
        for family in ROLE
        if (args.runs / family / "ood.md").exists() or family in previous
    ]
    header = [
        "# Out-of-distribution detection with genrun's scores",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (each section gives the load "
        f"while it ran). In-distribution: the test split of `{args.data}` ({len(test):,} "
        f"images); each OOD set {SET_SIZE} images built by `benchmarks/ood.py` (seed 0). "
        "Higher score = more OOD; AUROC 1 is perfect, 0.5 chance; FPR at 95% TPR is the "
        "share of an OOD set accepted when 95% of MNIST test is.",
        "",
    ]
    args.out.write_text("\n".join(header + sections))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
