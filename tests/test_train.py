"""The training loop and checkpoints: loss goes down on real MNIST, resume is
exact, checkpoints are atomic and untrusted files are refused."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from genrun.errors import UserError
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from gentrain.models import Glow, GlowConfig
from gentrain.train import TrainConfig, Trainer


def _glow(shape) -> Glow:
    torch.manual_seed(0)
    return Glow(GlowConfig(shape, levels=2, depth=2, hidden=16))


def _config(**overrides) -> TrainConfig:
    values = dict(
        steps=30,
        batch_size=32,
        lr=2e-3,
        optimizer="adamax",
        warmup=5,
        clip=50.0,
        eval_every=15,
        ckpt_every=10,
        log_every=5,
        device="cpu",
    )
    return TrainConfig(**{**values, **overrides})


def test_glow_training_lowers_test_bits_per_dim(mnist, tmp_path) -> None:
    trainer = Trainer(_glow(mnist.shape), mnist, _config(steps=40), tmp_path)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    test = [r["bpd"] for r in records if r["split"] == "test"]
    train = [r["bpd"] for r in records if r["split"] == "train"]
    assert len(test) >= 2 and test[-1] < test[0] - 0.3
    assert train[-1] < train[0] - 0.5
    assert all(r["images_per_s"] > 0 for r in records if r["split"] == "train")


def test_resume_equals_an_uninterrupted_run(mnist, tmp_path) -> None:
    whole = Trainer(_glow(mnist.shape), mnist, _config(steps=20), tmp_path / "a")
    whole.fit()
    first = Trainer(_glow(mnist.shape), mnist, _config(steps=10), tmp_path / "b")
    first.fit()
    payload = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert payload["step"] == 10
    resumed = Trainer(_glow(mnist.shape), mnist, _config(steps=20), tmp_path / "b", resume=payload)
    resumed.fit()
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_non_finite_losses_stop_with_a_clear_error_and_keep_the_checkpoint(mnist, tmp_path):
    trainer = Trainer(_glow(mnist.shape), mnist, _config(steps=10), tmp_path)
    trainer.fit()
    good = (tmp_path / "checkpoint.pt").read_bytes()
    broken = Trainer(
        _glow(mnist.shape),
        mnist,
        _config(steps=40, max_bad_steps=3),
        tmp_path,
        resume=load_checkpoint(tmp_path / "checkpoint.pt"),
    )
    with torch.no_grad():
        for p in broken.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(UserError, match="not finite for 3 steps"):
        broken.fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good


def test_checkpoint_round_trip_rebuilds_the_same_model(mnist, tmp_path) -> None:
    trainer = Trainer(_glow(mnist.shape), mnist, _config(steps=5), tmp_path)
    trainer.fit()
    model = model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"), family="glow")
    x = torch.from_numpy(mnist.test.images[:8])
    trainer.model.eval()
    key = "bpd_density_at_centers"
    assert torch.equal(model.evaluate(x)[key], trainer.model.evaluate(x)[key])
    with pytest.raises(UserError, match="holds a glow model, not a vae"):
        model_from_checkpoint(load_checkpoint(tmp_path / "checkpoint.pt"), family="vae")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class _Payload:
    """Pickled, this object runs `touch` on load with a plain unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "vaeflow-checkpoint", "version": 1, "x": _Payload(marker)}, evil)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    # A bare pickle file (not torch's zip format) is refused the same way.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_foreign_truncated_and_missing_files_are_one_line_errors(tmp_path) -> None:
    good = save_checkpoint(tmp_path / "good.pt", {"step": 1})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path, match in [
        (truncated, "truncated"),
        (foreign, "not a vaeflow checkpoint"),
        (text, "truncated or not a checkpoint"),
        (tmp_path / "nope.pt", "does not exist"),
    ]:
        with pytest.raises(UserError, match=match) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    assert zipfile.is_zipfile(good)


def test_epoch_batches_are_a_pure_function_of_seed_and_step(mnist) -> None:
    from gentrain.data import EpochBatches

    a = EpochBatches(mnist.train.images, 64, seed=3)
    b = EpochBatches(mnist.train.images, 64, seed=3)
    steps = [0, 40, 31, 5, 62]  # out of order, across epochs
    for step in steps:
        assert torch.equal(a.batch(step), b.batch(step))
    epoch = torch.cat([a.batch(s) for s in range(a.steps_per_epoch)])
    assert len(np.unique(epoch.numpy().reshape(len(epoch), -1), axis=0)) == len(epoch)
