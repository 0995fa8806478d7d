"""The training loop, shared by every family: warm-up, gradient clipping,
skipping non-finite steps, periodic test evaluation, a JSON-lines metrics log,
atomic checkpoints (every `ckpt_every` steps and every `ckpt_minutes`), a clean
stop on Ctrl-C or SIGTERM and exact resume (docs/training-safety.md)."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from genrun.errors import UserError
from genrun.readers import DATA_SPECS_HELP, DataSplit
from genrun.typed_json import parse

from . import ddp
from .checkpoint import save_checkpoint
from .data import EpochBatches, labelled_chunks
from .models import GenerativeModel
from .models.config import option
from .progress import Progress

CHECKPOINT_NAME = "checkpoint.pt"
OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    # The fields declared with `option` are `gentrain fit`'s training options.
    data: str = option("digits", f"Training data: {DATA_SPECS_HELP}")
    size: int | None = option(None, "Resize images to SIZE x SIZE.")
    epochs: int = option(10, "Passes over the training split.")
    steps: int | None = option(None, "Optimiser steps in all (overrides --epochs).")
    # Stop (evaluate, save) after this much training time.
    minutes: float | None = option(None, "Stop after this much training time.")
    batch_size: int = option(64, "Images per step.")
    lr: float = option(1e-3, "Peak learning rate.")
    optimizer: str = option("adam", "adam or adamax.")
    warmup: int = option(0, "Steps of linear learning-rate warm-up.")
    schedule: str = option("constant", "constant or cosine (decay to 0 at the end).")
    clip: float = option(0.0, "Max gradient norm (0: no clipping).")
    ema: float = option(0.0, "Decay of the weight average that is evaluated and saved (0: off).")
    # Test evaluations and checkpoints also happen at the end.
    eval_every: int = option(500, "Steps between test evaluations.")
    ckpt_every: int = option(1000, "Steps between checkpoints.")
    ckpt_minutes: float = option(5.0, "Also checkpoint every this many minutes (0: off).")
    log_every: int = 50  # steps between training-metric lines in metrics.jsonl
    max_bad_steps: int = 20  # consecutive non-finite steps before giving up
    seed: int = option(0, "Seed of weights, batches and noise.")
    device: str = option("auto", "auto, cpu or cuda.")

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(
                f"unknown optimizer '{self.optimizer}'; use one of: {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise UserError(
                f"unknown schedule '{self.schedule}'; use one of: {', '.join(SCHEDULES)}"
            )
        if self.batch_size < 1 or self.lr <= 0 or (self.steps is not None and self.steps < 1):
            raise UserError("--batch-size, --lr and --steps must be positive")
        if self.ckpt_minutes < 0:
            raise UserError(f"--ckpt-minutes must be 0 (off) or positive, got {self.ckpt_minutes}")
        if self.minutes is not None and self.minutes <= 0:
            raise UserError(f"--minutes must be positive, got {self.minutes}")
        if not 0 <= self.ema < 1:
            raise UserError(f"--ema must be in [0, 1), got {self.ema}")
        if self.epochs < 1 and self.steps is None:
            raise UserError("--epochs must be at least 1")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A run's stored settings, typed (genrun.typed_json); keys this
        version no longer has are left out."""
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in values.items() if k in known}
        fix = "the checkpoint is damaged or not from gentrain; start a new run"
        return parse(cls, kept, "the checkpoint's train config", fix)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


@torch.no_grad()
def test_objective(
    model: GenerativeModel, data: DataSplit, device: torch.device
) -> dict[str, float]:
    """The training objective's metrics averaged over the test split (cheap
    enough to run during training; `gentrain eval` computes the full figures).

    Its noise comes from a forked, fixed-seed RNG: every evaluation sees the
    same noise, and training's random stream is the same whether or not (and
    how often) it evaluates, which keeps resumed runs exact."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        for x, label in labelled_chunks(data.test, 500, labelled=model.num_classes > 0):
            label = None if label is None else label.to(device)
            metrics = model.objective(x.to(device), **_labelled(label)).metrics
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(x)
            count += len(x)
    model.train(was_training)
    return {key: value / count for key, value in totals.items()}


class WeightAverage:
    """Exponential moving average of the weights (Polyak averaging). Adam at
    the learning rates flows like makes the test likelihood jitter from step to
    step; the average is what gets evaluated, sampled and exported."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Early on average over fewer steps, so the first evaluations are not
        # dominated by the random initialisation.
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, current in zip(
            self.model.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if average.dtype.is_floating_point:
                average.lerp_(current, 1 - decay)
            else:
                average.copy_(current)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; what schedulers and `timeout` send


class _StopFlag:
    """Turns Ctrl-C and SIGTERM into a flag the loop checks between steps, so
    the step in flight finishes and the checkpoint is consistent. `signum`
    says which arrived (the CLI exits with 128 + signum: 130 or 143)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def raised(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> _StopFlag:
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.raised:  # a second signal stops at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Trainer:
    """Trains `model` on `data`, writing checkpoint.pt and metrics.jsonl to `out`."""

    def __init__(
        self,
        model: GenerativeModel,
        data: DataSplit,
        config: TrainConfig,
        out: Path,
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.config, self.data, self.out = config, data, Path(out)
        self.world = ddp.current()  # torchrun ranks, or one process
        self.device = pick_device(config.device)
        # Channels-last convolutions measured 1.2x faster for Glow on CPU.
        self.model = model.to(self.device, memory_format=torch.channels_last).train()
        self.optimizer = OPTIMIZERS[config.optimizer](model.parameters(), lr=config.lr)
        labels = data.train.labels if model.num_classes else None
        self.batches = EpochBatches(data.train.images, config.batch_size, config.seed, labels)
        self.total_steps = config.steps or config.epochs * self.batches.steps_per_epoch
        self.step = 0
        self.skipped = 0
        self.last_metrics: dict[str, float] = {}
        self.stop_signal: int | None = None  # SIGINT or SIGTERM when fit() stopped on one
        if resume is None:
            torch.manual_seed(config.seed)
            self._data_dependent_init()
        self.average = WeightAverage(self.model, config.ema) if config.ema > 0 else None
        if resume is not None:
            self._restore(resume)

    @property
    def final_model(self) -> GenerativeModel:
        """The weights to evaluate, sample and save: the average when there is one."""
        return self.average.model if self.average else self.model

    # -- state ----------------------------------------------------------
    def _data_dependent_init(self) -> None:
        """One forward pass on a larger batch initialises ActNorm-style layers
        from data (a no-op for families without them)."""
        generator = torch.Generator().manual_seed(self.config.seed)
        n = min(512, len(self.batches.images))
        index = torch.randperm(len(self.batches.images), generator=generator)[:n]
        labels = self.batches.labels_all
        label = None if labels is None else labels[index].to(self.device)
        with torch.no_grad():
            self.model.objective(self.batches.images[index].to(self.device), **_labelled(label))

    def _restore(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload.get("raw_model", payload["model"]))
        if self.average:
            self.average.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step = payload["step"]
        self.skipped = payload.get("skipped_steps", 0)
        self.last_metrics = payload.get("metrics", {})
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["rng"]["cuda"])

    def state(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        return {
            "family": self.model.family,
            "model_config": self.model.config.to_dict(),
            "train_config": asdict(self.config),
            "data": {"spec": self.data.spec, "shape": list(self.data.shape)},
            "model": _cpu(self.final_model.state_dict()),
            # With averaging, resuming needs the raw weights too.
            **({"raw_model": _cpu(self.model.state_dict())} if self.average else {}),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "skipped_steps": self.skipped,
            "rng": rng,
            "metrics": self.last_metrics,
        }

    def save(self) -> Path:
        if not self.world.is_main:  # rank 0 writes; every rank holds the same state
            return self.out / CHECKPOINT_NAME
        path = save_checkpoint(self.out / CHECKPOINT_NAME, self.state())
        self._saved_at = time.perf_counter()
        return path

    def _checkpoint_due(self) -> bool:
        """`ckpt_every` steps or `ckpt_minutes` since the last save: a run longer
        than either can always resume, whatever its length."""
        minutes = self.config.ckpt_minutes
        by_time = minutes > 0 and time.perf_counter() - self._saved_at >= minutes * 60
        return self.step % self.config.ckpt_every == 0 or by_time

    def _truncate_metrics(self) -> None:
        """Drop metrics.jsonl records past the step training restarts from (a
        killed run logged them after its last checkpoint; the resumed run logs
        them again) and any line a kill cut short, so no step appears twice."""
        path = self.out / "metrics.jsonl"
        if not self.world.is_main or not path.exists():  # rank 0 owns the log
            return
        kept = [line for line in path.read_text().splitlines() if _step_of(line) <= self.step]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    # -- the loop -------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _lr(self) -> float:
        config = self.config
        lr = config.lr * min(1.0, (self.step + 1) / max(config.warmup, 1))
        if config.schedule == "cosine" and self.step >= config.warmup:
            progress = (self.step - config.warmup) / max(self.total_steps - config.warmup, 1)
            if config.minutes is not None:  # decay over whichever budget ends first
                progress = max(progress, self._elapsed() / (config.minutes * 60))
            lr *= 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return lr

    def _train_step(self) -> dict[str, float] | None:
        """One optimiser step; None when the loss or gradient was not finite
        (the step is skipped and the weights stay as they were)."""
        batch, labels = self.batches.batch(self.step), self.batches.labels(self.step)
        x = self.world.local_slice(batch).to(self.device)
        label = None if labels is None else self.world.local_slice(labels).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        self.optimizer.zero_grad(set_to_none=True)
        with self.world.noise(len(batch)):
            objective = self.model.objective(x, **_labelled(label))
        if self.world.any(not torch.isfinite(objective.loss)):
            return None
        objective.loss.backward()
        self.world.average_gradients(self.model.parameters())
        max_norm = self.config.clip if self.config.clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if not torch.isfinite(grad_norm):
            return None
        self.optimizer.step()
        if self.average:
            self.average.update(self.model, self.step)
        return {**self.world.average_metrics(objective.metrics), "grad_norm": grad_norm.item()}

    def fit(self) -> dict[str, float]:
        """Train to `total_steps`; returns the final test metrics."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._truncate_metrics()
        self._saved_at = time.perf_counter()
        config, headline = self.config, self.model.headline_metric
        progress = Progress(self.total_steps, self.step, every=config.log_every)
        window: list[dict[str, float]] = []
        consecutive_bad = 0
        self._started, images_seen = time.perf_counter(), 0
        with _StopFlag() as stop:
            while self.step < self.total_steps:
                if self.world.any(stop.raised):
                    progress.close()
                    self.save()
                    self.stop_signal = stop.signum
                    raise KeyboardInterrupt
                metrics = self._train_step()
                if metrics is None:
                    self.skipped += 1
                    consecutive_bad += 1
                    if consecutive_bad >= config.max_bad_steps:
                        progress.close()
                        raise UserError(
                            f"the loss was not finite for {consecutive_bad} steps in a row at step "
                            f"{self.step}; lower --lr or set --clip (the last checkpoint is kept)"
                        )
                    self.step += 1
                    continue
                consecutive_bad = 0
                window.append(metrics)
                self.step += 1
                images_seen += self.batches.batch_size
                speed = images_seen / self._elapsed()
                progress.update(
                    self.step, f"{headline} {metrics[headline]:.4f} | {speed:.0f} img/s"
                )
                out_of_time = config.minutes is not None and self.world.any(
                    self._elapsed() >= config.minutes * 60
                )
                last = self.step == self.total_steps or out_of_time
                if self.step % config.log_every == 0 or last:
                    self._log_train(window, speed)
                    window = []
                if (self.step % config.eval_every == 0 or last) and self.world.is_main:
                    self.last_metrics = test_objective(self.final_model, self.data, self.device)
                    self._log({"step": self.step, "split": "test", **self.last_metrics})
                if self._checkpoint_due() or last:
                    self.save()
                if out_of_time:
                    break
        progress.close()
        return self.last_metrics

    def _elapsed(self) -> float:
        """Seconds this session has been training."""
        return time.perf_counter() - self._started

    def _log_train(self, window: list[dict[str, float]], speed: float) -> None:
        if not window:
            return
        mean = {key: sum(m[key] for m in window) / len(window) for key in window[0]}
        self._log(
            {
                "step": self.step,
                "epoch": self.step / self.batches.steps_per_epoch,
                "split": "train",
                **mean,
                "lr": self._lr(),
                "images_per_s": speed,
                "skipped_steps": self.skipped,
                "time": time.time(),
            }
        )


def _labelled(label: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The label argument of a conditional model's calls; none for any other
    (so families without a conditional form keep their one-argument contract)."""
    return {} if label is None else {"label": label}


def _step_of(line: str) -> float:
    """The step of one metrics.jsonl line; infinite for a line cut short."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu() for key, value in state.items()}
