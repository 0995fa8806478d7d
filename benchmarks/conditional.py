"""Class-conditional Glow: does it know its classes? On the shared MNIST (8,000
train / 1,000 test) and the embedded digits, for the engines that ship
(genrun/builtin, made by scripts/builtin_engines.py with gentrain's default
budget).

    python benchmarks/conditional.py --mnist DIR [--work runs/builtin]

DIR: the folder of the MNIST IDX files the MNIST engine was trained on (the
8,000 / 1,000-image subset; scripts/builtin_engines.py's --mnist).

For each shipped model:
- the generative classifier argmax_y P(x|y) p(y) on the test split, through
  the shipped marginal engine (`genrun classify`), beside `gentrain eval`'s
  accuracy, bits/dim of P(x|y) and of P(x) and the training cost recorded in
  the engine's manifest;
- a plain classifier (a small CNN trained here, seeded, on the same training
  split) and its test accuracy;
- 1,000 conditional samples at T = 0.7 from the shipped generate engine (100
  per class, seed 0): how often the plain classifier names the class they
  were drawn for (the issue's bar: at least 90%), per class too.
Prints the table and writes benchmarks/results/conditional.md (with a sample
grid per model, one row per class).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genrun.engine import load
from genrun.images import save_grid
from genrun.readers import load_data
from genrun.sampler import Sampler
from genrun.scorer import Scorer

RESULTS = Path(__file__).parent / "results"
SAMPLES_PER_CLASS = 100
TEMPERATURE = 0.7
CNN_EPOCHS = 8
SEED = 0
# One run of 1,000 samples moves by about a point between noise seeds: the
# table's figure is seed 0's, and these seeds give its spread.
SPREAD_SEEDS = range(5)


class SmallCNN(nn.Module):
    """conv 3x3 32 - ReLU - conv 3x3 64 - ReLU - max pool 2 - dropout - linear
    128 - ReLU - linear K: the plain classifier the samples are judged by."""

    def __init__(self, shape: tuple[int, int, int], classes: int) -> None:
        super().__init__()
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(64 * (h // 2) * (w // 2), 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


def train_cnn(images: np.ndarray, labels: np.ndarray, classes: int) -> tuple[SmallCNN, float]:
    """The plain classifier, trained with Adam (seeded); and its seconds."""
    torch.manual_seed(SEED)
    model = SmallCNN(images.shape[1:], classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    model.train()
    for _ in range(CNN_EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval(), time.perf_counter() - started


@torch.no_grad()
def predict(model: SmallCNN, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images)
    return torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)]).numpy()


def measure(name: str, spec: str) -> dict:
    data = load_data(spec)
    classes = len(data.class_counts())
    marginal = Scorer(load(f"builtin:{name}", role="density"))
    made = marginal.engine.manifest.provenance
    started = time.perf_counter()
    picked = marginal.classify(data.test.images).argmax(1)
    classify_s = time.perf_counter() - started
    cnn, cnn_s = train_cnn(data.train.images, data.train.labels, classes)
    cnn_accuracy = float((predict(cnn, data.test.images) == data.test.labels).mean())
    sampler = Sampler(load(f"builtin:{name}", role="generate"))
    drawn_for = np.repeat(np.arange(classes), SAMPLES_PER_CLASS)

    def draw(seed: int) -> np.ndarray:
        per_class = [
            sampler.sample(SAMPLES_PER_CLASS, TEMPERATURE, seed=seed, label=c)
            for c in range(classes)
        ]
        return np.concatenate(per_class)

    samples = draw(SEED)
    agree = predict(cnn, samples) == drawn_for
    spread = [float((predict(cnn, draw(seed)) == drawn_for).mean()) for seed in SPREAD_SEEDS]
    grid = RESULTS / "figures" / f"conditional-{name}.png"
    rows = samples.reshape(classes, SAMPLES_PER_CLASS, *samples.shape[1:])[:, :12]
    save_grid(rows.reshape(-1, *samples.shape[1:]), grid, nrow=12, scale=max(1, 28 // 8))
    return {
        "name": name,
        "spec": spec.split(":")[0],
        "genrun_accuracy": float((picked == data.test.labels).mean()),
        "classify_s": classify_s,
        "test_images": len(data.test.images),
        "made": made,
        "cnn_accuracy": cnn_accuracy,
        "cnn_s": cnn_s,
        "agreement": float(agree.mean()),
        "spread": spread,
        "per_class": [float(agree[drawn_for == c].mean()) for c in range(classes)],
        "grid": grid,
    }


def report(rows: list[dict]) -> str:
    lines = [
        "# Class-conditional Glow: classification and class-true samples",
        "",
        "Written by `benchmarks/conditional.py` for the engines that ship with genrun",
        "(`genrun/builtin`, made by `scripts/builtin_engines.py`: `gentrain fit glow",
        "--conditional` with the default budget, seed 0). Measured on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, a machine",
        "shared with other work (loaded: times are not speeds to compare).",
        "",
        "| model | steps (train min) | test bits/dim P(x\\|y) / P(x) | generative classifier "
        "test accuracy (gentrain eval / genrun classify) | plain CNN test accuracy | "
        "CNN agrees with the class of 1,000 samples at T = 0.7 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row["made"].results
        lines.append(
            f"| builtin:{row['name']} | {r['steps']:.0f} ({r['training_minutes']:.0f}) | "
            f"{r['test_bpd_given_label']:.3f} / {r['test_bpd_marginal']:.3f} | "
            f"{r['test_accuracy']:.2%} / {row['genrun_accuracy']:.2%} | "
            f"{row['cnn_accuracy']:.2%} | {row['agreement']:.1%} |"
        )
    lines.append("")
    for row in rows:
        per_class = ", ".join(f"{c}: {a:.0%}" for c, a in enumerate(row["per_class"]))
        lines += [
            f"## builtin:{row['name']}",
            "",
            f"- Data: {row['made'].data}.",
            f"- The generative classifier reads the marginal engine's log P(x|y) of every "
            f"class at the bin centres (the class couplings: one flow pass per image and "
            f"class): {row['test_images']} test "
            f"images in {row['classify_s']:.1f} s through ONNX Runtime.",
            f"- Plain classifier: {SmallCNN.__doc__.split(':')[0].strip()}, Adam 1e-3, "
            f"{CNN_EPOCHS} epochs, batch 64, seed {SEED}: {row['cnn_s']:.0f} s.",
            f"- Agreement per class ({SAMPLES_PER_CLASS} samples each): {per_class}.",
            f"- Agreement of 1,000 samples by noise seed "
            f"{SPREAD_SEEDS.start}..{SPREAD_SEEDS.stop - 1}: "
            + ", ".join(f"{a:.1%}" for a in row["spread"])
            + f" (mean {np.mean(row['spread']):.1%}).",
            f"- Samples (12 of the 100 per class, one row per class): "
            f"[{row['grid'].name}](figures/{row['grid'].name}).",
            "",
        ]
    lines += [
        "Commands that made each engine are in its manifest "
        "(`genrun info --engine builtin:NAME.generate`) and genrun/builtin/README.md.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, required=True, help="folder of the MNIST IDX files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [measure("mnist-glow", f"mnist:{args.mnist}"), measure("digits-glow", "digits")]
    text = report(rows)
    print(text)
    (RESULTS / "conditional.md").write_text(text)


if __name__ == "__main__":
    main()
