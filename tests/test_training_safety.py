"""Training loses nothing (docs/training-safety.md): kill -9 at random moments
then resuming ends bit-identical to an uninterrupted run, with a loadable
checkpoint after every kill and no step logged twice; checkpoints by time;
SIGTERM saves like Ctrl-C; `gentrain eval` refuses non-finite figures.

Training runs in forked children (torch is already imported, so a child
starts in milliseconds) that the test kills with SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli_helpers import InProcessCli
from training_helpers import first_images

from genrun.readers import DataSplit
from gentrain.checkpoint import load_checkpoint, save_checkpoint
from gentrain.cli import main
from gentrain.models import Glow, GlowConfig
from gentrain.train import CHECKPOINT_NAME, TrainConfig, Trainer

gentrain = InProcessCli(main, "gentrain")
KILLS = 12
STEPS = 4 * KILLS + 12  # each life makes at most 4 steps: the run never ends in one


@pytest.fixture(scope="module")
def tiny_mnist(mnist) -> DataSplit:
    """The 500 training and first 64 test images of the repository's MNIST subset."""
    return first_images(mnist, 500, 64)


def _glow(shape) -> Glow:
    torch.manual_seed(0)
    return Glow(GlowConfig(shape, levels=2, depth=1, hidden=8))


def _config(**overrides) -> TrainConfig:
    values = dict(
        steps=STEPS,
        batch_size=16,
        lr=2e-3,
        warmup=5,
        clip=50.0,
        ema=0.99,
        eval_every=50,
        ckpt_every=1,  # a checkpoint every step: kills often land mid-write
        log_every=5,
        device="cpu",
    )
    return TrainConfig(**{**values, **overrides})


def _train(data: DataSplit, out: Path, **overrides) -> Trainer:
    """What `gentrain fit` does: resume when a checkpoint is there, else start."""
    path = out / CHECKPOINT_NAME
    payload = load_checkpoint(path) if path.exists() else None
    trainer = Trainer(_glow(data.shape), data, _config(**overrides), out, resume=payload)
    trainer.fit()
    return trainer


def _fork(work: Callable[[], None]) -> int:
    """Run `work` in a child process (one thread, as every run here); its pid."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 0
        try:
            torch.set_num_threads(1)
            work()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 60.0) -> int:
    """The child's exit status (-signal when killed), failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"training child {pid} hung")


def _steps_logged(out: Path) -> list[tuple[int, str]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [(record["step"], record["split"]) for record in map(json.loads, lines)]


def _checkpoint_id(out: Path) -> tuple[int, int] | None:
    """The checkpoint file's inode and mtime: every atomic write (a rename of a
    new file) changes them."""
    try:
        stat = (out / CHECKPOINT_NAME).stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _kill_after(pid: int, out: Path, writes: int, moments: random.Random, step_s: float) -> float:
    """SIGKILL `pid` once it has written its checkpoint `writes` times, at a
    random moment of the step after (so kills land in set-up, mid-step and
    mid-write alike); the moment is counted in steps, not seconds, so the test
    proves the same on a fast machine and a loaded one. Returns the seconds one
    step took, for the next call."""
    seen, last = 0, _checkpoint_id(out)
    first = deadline = time.monotonic() + 120
    while seen < writes and time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:  # reaped below: the run ended early
            raise AssertionError("the run finished before its kill; raise STEPS")
        current = _checkpoint_id(out)
        if current != last:
            seen, last = seen + 1, current
            if seen == 1:
                first = time.monotonic()
            else:
                step_s = (time.monotonic() - first) / (seen - 1)
        time.sleep(0.001)
    assert seen == writes, f"training child {pid} wrote {seen} of {writes} checkpoints in 120 s"
    time.sleep(moments.uniform(0, step_s))
    os.kill(pid, signal.SIGKILL)
    return step_s


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_ends_bit_identical(tiny_mnist, tmp_path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # Warm up here: torch's first convolutions in a process take over a second
    # (kernel set-up); forked children inherit the warm state.
    _train(tiny_mnist, tmp_path / "warm-up", steps=2)
    assert _wait(_fork(lambda: _train(tiny_mnist, whole))) == 0

    moments = random.Random(0)
    steps_seen, step_s = [], 0.05
    for _ in range(KILLS):
        pid = _fork(lambda: _train(tiny_mnist, killed))
        # 0 to 3 checkpoints into this life (0: in set-up or the first step).
        step_s = _kill_after(pid, killed, moments.randint(0, 3), moments, step_s)
        assert _wait(pid) == -signal.SIGKILL
        if (killed / CHECKPOINT_NAME).exists():  # loadable after every kill
            steps_seen.append(load_checkpoint(killed / CHECKPOINT_NAME)["step"])
    assert steps_seen, "every kill came before the first checkpoint"
    assert steps_seen == sorted(steps_seen)
    assert _wait(_fork(lambda: _train(tiny_mnist, killed))) == 0

    a, b = (load_checkpoint(out / CHECKPOINT_NAME) for out in (whole, killed))
    assert a["step"] == b["step"] == STEPS
    for part in ("model", "raw_model"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"
    for index, state in a["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][index][key]), (index, key)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    # metrics.jsonl holds each logged step once, in order, as the whole run's does.
    assert _steps_logged(killed) == _steps_logged(whole)


def test_a_resumed_run_truncates_metrics_to_the_checkpoint_step(tiny_mnist, tmp_path) -> None:
    _train(tiny_mnist, tmp_path, steps=10, ckpt_every=10, eval_every=5)
    with open(tmp_path / "metrics.jsonl", "a") as log:  # what a run killed later had logged
        log.write(json.dumps({"step": 15, "split": "train"}) + "\n")
        log.write('{"step": 20, "spl')  # a line the kill cut short
    _train(tiny_mnist, tmp_path, steps=20, ckpt_every=10, eval_every=5)
    steps = _steps_logged(tmp_path)
    assert len(set(steps)) == len(steps), steps  # no step logged twice
    assert [step for step, _ in steps] == sorted(step for step, _ in steps)
    assert [s for s, split in steps if split == "train"] == [5, 10, 15, 20]


def test_checkpoints_are_written_by_time_as_well_as_by_step(tiny_mnist, tmp_path, monkeypatch):
    saved = []
    original = Trainer.save

    def counting_save(self):
        saved.append(self.step)
        return original(self)

    monkeypatch.setattr(Trainer, "save", counting_save)
    # ckpt_every never comes; 6 ms of ckpt_minutes passes between any two steps.
    _train(tiny_mnist, tmp_path, steps=6, ckpt_every=10**6, ckpt_minutes=1e-4)
    assert saved == [1, 2, 3, 4, 5, 6]
    saved.clear()
    _train(tiny_mnist, tmp_path / "off", steps=6, ckpt_every=10**6, ckpt_minutes=0)
    assert saved == [6]  # 0 turns the clock off: only the end


def test_sigterm_saves_the_checkpoint_and_exits_143(tiny_mnist, tmp_path, monkeypatch) -> None:
    original = Trainer._train_step

    def step_then_terminate(self):
        if self.step == 3:  # what a scheduler or `timeout` does mid-run
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", step_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    code, _, err = gentrain.run(
        "fit", "glow", "--data", tiny_mnist.spec, "--steps", "50", "--levels", "2",
        "--depth", "1", "--hidden", "8", "--batch-size", "16", "--device", "cpu",
        "--out", out,
    )  # fmt: skip
    assert code == 143, err
    assert "stopped at step 4" in err and "--resume" in err
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 4
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is undone


def test_eval_of_a_checkpoint_with_a_nan_weight_is_a_one_line_error(tiny_mnist, tmp_path):
    _train(tiny_mnist, tmp_path, steps=2)
    payload = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    payload["model"] = dict(payload["model"])
    name = next(k for k in payload["model"] if k.endswith("net.conv1.weight"))
    payload["model"][name] = payload["model"][name].clone()
    payload["model"][name][0, 0, 0, 0] = float("nan")
    kept = {k: v for k, v in payload.items() if k not in ("format", "version")}
    broken = save_checkpoint(tmp_path / "nan.pt", kept)
    result = gentrain.run("eval", broken)
    # Refused by the checkpoint loader before anything is evaluated.
    gentrain.assert_one_line_error(result, "holds NaN or inf")
    assert "bpd nan" not in result[1]
