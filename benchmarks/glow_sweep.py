"""Glow architecture/schedule sweep at equal CPU-time budgets.

Each candidate trains for the number of steps that fits 15 minutes on this
project's reference machine (2 CPU cores; images/s measured there and written
below), so the sweep can run anywhere (a GPU makes it minutes) and still rank
configurations by what 15 CPU-minutes buy. Prints a table and writes
benchmarks/results/glow-sweep.md.

    python benchmarks/glow_sweep.py --data mnist:DIR --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from genrun.readers import load_data
from gentrain.evaluate import evaluate_images
from gentrain.models import Glow, GlowConfig
from gentrain.train import TrainConfig, Trainer

MNIST_MINI = Path(__file__).resolve().parents[1] / "tests" / "data" / "mnist-mini"  # the default
BUDGET_S = float(os.environ.get("SWEEP_BUDGET_S", 870))  # 15 minutes less evaluation and start-up
# (name, model options, train options, images/s on the 2-core reference machine)
CANDIDATES = [
    ("K8-H128", dict(depth=8, hidden=128), dict(), 220),
    (
        "K8-H128-adam-const",
        dict(depth=8, hidden=128),
        dict(optimizer="adam", schedule="constant"),
        220,
    ),
    ("K8-H128-additive", dict(depth=8, hidden=128, coupling="additive"), dict(), 225),
    ("K8-H64", dict(depth=8, hidden=64), dict(), 479),
    ("K8-H64-lr2e-3", dict(depth=8, hidden=64), dict(lr=2e-3), 479),
    ("K8-H64-bs128", dict(depth=8, hidden=64), dict(batch_size=128), 415),
    ("K16-H64", dict(depth=16, hidden=64), dict(), 234),
    ("K12-H96", dict(depth=12, hidden=96), dict(), 195),
    ("K32-H32", dict(depth=32, hidden=32), dict(), 160),
    # Round 2: Adam with a constant rate won round 1, so push the rate.
    (
        "K8-H128-adam2e-3",
        dict(depth=8, hidden=128),
        dict(optimizer="adam", lr=2e-3, schedule="constant"),
        220,
    ),
    ("K8-H64-adam1e-3", dict(depth=8, hidden=64), dict(optimizer="adam", schedule="constant"), 479),
    (
        "K8-H64-adam2e-3",
        dict(depth=8, hidden=64),
        dict(optimizer="adam", lr=2e-3, schedule="constant"),
        479,
    ),
    (
        "K16-H64-adam1e-3",
        dict(depth=16, hidden=64),
        dict(optimizer="adam", schedule="constant"),
        234,
    ),
    # Round 3: the test figure jitters from step to step at these rates: average the weights.
    (
        "K8-H128-adam2e-3-ema",
        dict(depth=8, hidden=128),
        dict(optimizer="adam", lr=2e-3, schedule="constant", ema=0.999),
        220,
    ),
    (
        "K8-H128-adam4e-3-ema",
        dict(depth=8, hidden=128),
        dict(optimizer="adam", lr=4e-3, schedule="constant", ema=0.999),
        220,
    ),
    (
        "K8-H64-adam3e-3-ema",
        dict(depth=8, hidden=64),
        dict(optimizer="adam", lr=3e-3, schedule="constant", ema=0.999),
        479,
    ),
]
BASE_TRAIN = dict(
    optimizer="adamax", lr=1e-3, batch_size=64, warmup=200, schedule="cosine", clip=50.0
)


def run(name, model_options, train_options, speed, args) -> dict:
    train = {**BASE_TRAIN, **train_options}
    steps = int(BUDGET_S * speed / train["batch_size"])
    data = load_data(args.data)
    torch.manual_seed(0)
    model = Glow(GlowConfig(data.shape, levels=2, **model_options))
    config = TrainConfig(
        data=args.data,
        steps=steps,
        eval_every=max(steps // 6, 1),
        ckpt_every=10**9,
        device=args.device,
        **train,
    )
    out = Path(args.out) / name
    trainer = Trainer(model, data, config, out)
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started
    torch.manual_seed(0)
    model = trainer.final_model
    metrics = evaluate_images(model, data.test.images, 500, trainer.device)
    finite = []
    for temperature in (0.0, 0.5, 0.7, 1.0):
        torch.manual_seed(1)
        y = model.reverse(model.noise(256, trainer.device), temperature)
        finite.append(int(torch.isfinite(y.flatten(1)).all(1).sum()))
    return {
        "name": name,
        "steps": steps,
        "wall_s": wall,
        "bpd": metrics["bpd"]["mean"],
        "skipped": trainer.skipped,
        "finite": finite,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=f"mnist:{MNIST_MINI}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default="", help="comma-separated candidate names")
    parser.add_argument("--out", default="runs/glow-sweep")
    args = parser.parse_args()
    rows = []
    for name, model_options, train_options, speed in CANDIDATES:
        if args.only and name not in args.only.split(","):
            continue
        rows.append(run(name, model_options, train_options, speed, args))
        print(rows[-1], flush=True)
    lines = [
        "# Glow sweep at equal 15-minute CPU budgets",
        "",
        f"Data {args.data}; trained on {args.device} ({platform.node()}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()}); "
        "steps = 870 s x images/s of the 2-core reference machine / batch size. "
        "Test bits/dim with uniform dequantisation; finite = samples of 256 "
        "without NaN/inf at T = 0, 0.5, 0.7, 1.",
        "",
        "| config | steps | wall s | test bits/dim | skipped steps | finite samples |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['wall_s']:.0f} | {r['bpd']:.4f} | "
            f"{r['skipped']} | {'/'.join(map(str, r['finite']))} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
    Path("benchmarks/results/glow-sweep.md").write_text(text)


if __name__ == "__main__":
    main()
