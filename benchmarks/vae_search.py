"""Scratch search for benchmarks/vae_quality_notes.md: a minimal Adam loop
training one VAE on the shared MNIST subset, then its test figures.

Stand-in until the real training loop lands; CPU only, 2 threads, one run at a time:

    .venv/bin/python benchmarks/vae_search.py --hidden 400 --latent 20 --epochs 10
    .venv/bin/python benchmarks/vae_search.py --depth 2 --seconds 120 --schedule cosine
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from genrun.readers import load_data
from gentrain.models.vae import VAE, VAEConfig

MNIST = "mnist:/work/shared/data/mnist"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--latent", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10, help="at most this many")
    parser.add_argument("--seconds", type=float, default=None, help="training time budget")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--eval-k", type=int, default=1000, help="importance samples for NLL")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def train(model: VAE, images: torch.Tensor, args: argparse.Namespace) -> float:
    """Adam on shuffled batches; returns training wall time in seconds. The
    cosine schedule runs over the time budget when there is one, else over
    the epochs, so a budgeted run always ends at a small learning rate."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(len(images) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    start, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(images))
        metrics = []
        for first in range(0, len(images), args.batch):
            elapsed = time.perf_counter() - start
            progress = elapsed / args.seconds if args.seconds else step / total_steps
            if args.schedule == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
            objective = model.objective(images[order[first : first + args.batch]])
            optimizer.zero_grad()
            objective.loss.backward()
            optimizer.step()
            metrics.append(objective.metrics["nelbo"])
            step += 1
        elapsed = time.perf_counter() - start
        print(f"epoch {epoch + 1}: train nelbo {sum(metrics) / len(metrics):.2f}  {elapsed:.1f} s")
        if args.seconds and elapsed >= args.seconds:
            break
    return time.perf_counter() - start


@torch.no_grad()
def test_figures(model: VAE, images: torch.Tensor, k: int) -> dict[str, float]:
    totals: dict[str, float] = {}
    for first in range(0, len(images), 250):
        for name, values in model.evaluate(images[first : first + 250], iw_samples=k).items():
            totals[name] = totals.get(name, 0.0) + values.sum().item()
    return {name: total / len(images) for name, total in totals.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    data = load_data(MNIST)
    train_images = torch.as_tensor(data.train.images)
    test_images = torch.as_tensor(data.test.images)
    config = VAEConfig(
        tuple(train_images.shape[1:]),
        latent_dim=args.latent,
        arch=args.arch,
        hidden=args.hidden,
        depth=args.depth,
    )
    model = VAE(config)
    seconds = train(model, train_images, args)
    start = time.perf_counter()
    figures = test_figures(model, test_images, args.eval_k)
    print(
        f"RESULT {vars(args)} train {seconds:.1f} s | test nelbo {figures['nelbo']:.2f}"
        f" rec {figures['rec']:.2f} kl {figures['kl']:.2f} | nll(K={args.eval_k})"
        f" {figures['nll']:.2f} | eval {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
