"""Data-parallel training (gentrain/ddp.py): 2 ranks on gloo train the
same model as one process (Glow with ActNorm's data-dependent init and
dequantisation noise; the VAE with its reparameterisation noise), with EMA
and clipping, and resume exactly."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genrun.readers import DataSplit, ImageSet, load_data
from gentrain import ddp
from gentrain.checkpoint import load_checkpoint
from gentrain.models import new_model
from gentrain.train import TrainConfig, Trainer

MODELS_METRIC = {"glow": ("bpd",), "vae": ("nelbo", "rec", "kl")}
MODELS = {
    "glow": {"levels": 2, "depth": 2, "hidden": 8},
    "vae": {"latent_dim": 4, "hidden": 32, "likelihood": "gaussian-learned"},
}


@pytest.fixture(scope="module")
def digits() -> DataSplit:
    data = load_data("digits")
    return DataSplit(
        train=ImageSet(data.train.images[:256], data.train.labels[:256]),
        test=ImageSet(data.test.images[:64], data.test.labels[:64]),
        spec=data.spec,
    )


def _config(steps: int) -> TrainConfig:
    return TrainConfig(
        steps=steps, batch_size=16, lr=2e-3, warmup=2, clip=5.0, ema=0.9, eval_every=100,
        ckpt_every=100, log_every=1, device="cpu",
    )  # fmt: skip


def _train(family: str, data: DataSplit, out: Path, steps: int, resume: bool = False) -> None:
    payload = load_checkpoint(out / "checkpoint.pt") if resume else None
    model = new_model(family, MODELS[family], data, seed=0)
    Trainer(model, data, _config(steps), out, resume=payload).fit()


def _rank(rank: int, size: int, port: int, jobs: list) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        for job in jobs:
            _train(*job)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def _two_ranks(jobs: list) -> None:
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_rank, args=(2, port, jobs), nprocs=2, join=True)


def _train_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["split"] == "train"]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    payload = load_checkpoint(out / "checkpoint.pt")
    return {**payload["model"], **{f"raw.{k}": v for k, v in payload["raw_model"].items()}}


@pytest.mark.slow
def test_two_gloo_ranks_train_what_one_process_trains_and_resume_exactly(digits, tmp_path):
    jobs = []
    for family in MODELS:
        jobs += [
            (family, digits, tmp_path / f"{family}-ddp", 4),
            (family, digits, tmp_path / f"{family}-ddp-resumed", 2),
            (family, digits, tmp_path / f"{family}-ddp-resumed", 4, True),
        ]
    _two_ranks(jobs)
    for family in MODELS:
        _train(family, digits, tmp_path / f"{family}-one", 4)
        one, ddp = _weights(tmp_path / f"{family}-one"), _weights(tmp_path / f"{family}-ddp")
        resumed = _weights(tmp_path / f"{family}-ddp-resumed")
        assert one.keys() == ddp.keys()
        for key in one:
            torch.testing.assert_close(ddp[key], one[key], rtol=0, atol=1e-6, msg=key)
            assert torch.equal(resumed[key], ddp[key]), f"{family} {key} differs after resume"
        # Rank 0 logs the global batch's train metrics, as one process does.
        logs = [_train_records(tmp_path / f"{family}-{kind}") for kind in ("one", "ddp")]
        assert len(logs[0]) == len(logs[1]) == 4
        for single, ranks in zip(*logs, strict=True):
            for key in ("lr", "grad_norm", *MODELS_METRIC[family]):
                assert ranks[key] == pytest.approx(single[key], rel=1e-5), key


def test_global_batch_noise_gives_each_rank_its_rows_of_one_draw() -> None:
    torch.manual_seed(3)
    whole = [torch.rand(6, 2, 2), torch.randn(6, 5), torch.randn_like(torch.empty(6, 3))]
    for rank in range(3):
        torch.manual_seed(3)
        with ddp.World(rank, 3).noise(6):
            parts = [torch.rand(2, 2, 2), torch.randn(2, 5), torch.randn_like(torch.empty(2, 3))]
        for part, full in zip(parts, whole, strict=True):
            assert torch.equal(part, full[2 * rank : 2 * rank + 2])
    # Draws of other sizes are left alone, so they stay equal on every rank.
    torch.manual_seed(3)
    with ddp.World(1, 3).noise(6):
        other = torch.randn(7)
    torch.manual_seed(3)
    assert torch.equal(other, torch.randn(7))


def test_a_batch_that_does_not_split_evenly_is_refused() -> None:
    from genrun.errors import UserError

    with pytest.raises(UserError, match="multiple of 3"):
        ddp.World(0, 3).local_slice(torch.zeros(16, 1))
    assert np.array_equal(ddp.World().local_slice(torch.arange(4)).numpy(), np.arange(4))
