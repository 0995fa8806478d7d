"""Shared pytest fixtures: the data, tiny trained checkpoints and their engines,
each made once per test session.

Must not import torch at module level: the genrun tests run without it (the
fixtures that train import it when first used)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

MAX_WORKERS = 4  # past this, each worker's copy of the session fixtures costs more than it saves


def _cpus() -> list[int]:
    """The CPUs this process may use (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (scripts/test.sh): one worker per CPU this process may use, at most MAX_WORKERS."""
    return min(len(_cpus()), MAX_WORKERS)


def _one_core_per_worker() -> None:
    """Under pytest-xdist with no more workers than CPUs, pin each worker (and
    the processes it starts) to a CPU of its own and run torch, BLAS and ONNX
    Runtime (whose default is one thread per CPU it may use) on one thread:
    two workers each spinning two threads on two cores ran slower than one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = _cpus()
    if worker is None or workers > len(cpus):
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpus[int(worker.removeprefix("gw"))]})
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"  # read when torch and numpy load (after this file)


_one_core_per_worker()

# 500 train / 100 test real MNIST digits shipped with the tests (its README:
# provenance and licence). Nothing outside the repository is ever read.
MNIST_DIR = Path(__file__).resolve().parent / "data" / "mnist-mini"

# Four steps: enough for real (non-initial) weights, seconds to train.
TINY_RUN = dict(steps=4, batch_size=32, warmup=1, eval_every=4, ckpt_every=4, log_every=4)


@pytest.fixture(scope="session")
def mnist():
    """The repository's MNIST subset (500 train / 100 test, 28x28), read once per session."""
    from genrun.readers import load_data

    return load_data(f"mnist:{MNIST_DIR}")


@pytest.fixture(scope="session")
def digits():
    """The embedded 8x8 digits (1,797 images, 5 bits), split as gentrain splits them."""
    from genrun.readers import load_data

    return load_data("digits")


def _made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make) -> Path:
    """The folder `make(folder)` fills, made once per test run: under
    pytest-xdist the first worker to ask makes it while the others wait on a
    lock, then every worker reads it. Read it, never modify it."""
    base = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        base = base.parent  # the run's folder, above each worker's own
    folder = base / "made-once" / name
    folder.parent.mkdir(exist_ok=True)
    from filelock import FileLock  # a dependency of torch, which the fixtures need anyway

    with FileLock(f"{folder}.lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker stopped midway
            folder.mkdir()
            make(folder)
            (folder / ".done").touch()
    return folder


def _train_tiny(family: str, data, out: Path) -> None:
    """conftest's tiny models, TINY_RUN steps on `data` into the run folder `out`."""
    import torch

    from gentrain.models import VAE, Glow, GlowConfig, VAEConfig
    from gentrain.train import TrainConfig, Trainer

    torch.manual_seed(0)
    if family == "glow":
        model = Glow(GlowConfig(data.shape, levels=2, depth=2, hidden=16))
        config = TrainConfig(optimizer="adamax", lr=2e-3, clip=50.0, device="cpu", **TINY_RUN)
    elif family == "conditional-glow":
        counts = data.class_counts()
        model = Glow(
            GlowConfig(
                data.shape, levels=2, depth=1, hidden=8, conditional=True, class_counts=counts
            )
        )
        config = TrainConfig(device="cpu", **TINY_RUN)
    else:
        model = VAE(VAEConfig(data.shape, latent_dim=4, hidden=32))
        config = TrainConfig(device="cpu", **TINY_RUN)
    Trainer(model, data, config, out).fit()


@pytest.fixture(scope="session")
def glow_checkpoint(digits, tmp_path_factory) -> Path:
    """A tiny Glow (levels 2, depth 2, hidden 16) trained 4 steps on the digits."""
    run = _made_once(tmp_path_factory, "glow", lambda out: _train_tiny("glow", digits, out))
    return run / "checkpoint.pt"


@pytest.fixture(scope="session")
def vae_checkpoint(digits, tmp_path_factory) -> Path:
    """A tiny VAE (latent 4, hidden 32) trained 4 steps on the digits."""
    run = _made_once(tmp_path_factory, "vae", lambda out: _train_tiny("vae", digits, out))
    return run / "checkpoint.pt"


@pytest.fixture(scope="session")
def conditional_glow_checkpoint(digits, tmp_path_factory) -> Path:
    """A tiny class-conditional Glow (levels 2, depth 1, hidden 8; the digits'
    10 classes) trained 4 steps on the digits."""
    family = "conditional-glow"
    run = _made_once(tmp_path_factory, family, lambda out: _train_tiny(family, digits, out))
    return run / "checkpoint.pt"


@pytest.fixture(scope="session")
def conditional_glow_exported(conditional_glow_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """role -> engine of the tiny conditional Glow: `c.generate.onnx` and
    `c.density.onnx` (label input) and `c.marginal.onnx` (`genexport onnx
    --marginal`: no label). Read-only, like glow_exported."""

    def export(out: Path) -> None:
        from genexport.export import export_checkpoint

        export_checkpoint(conditional_glow_checkpoint, out, name="c", marginal=True)

    out = _made_once(tmp_path_factory, "conditional-glow-engines", export)
    return {role: out / f"c.{role}.onnx" for role in ("generate", "density", "marginal")}


@pytest.fixture(scope="session")
def glow_export_run(glow_checkpoint, tmp_path_factory) -> tuple[dict[str, Path], str]:
    """`genexport onnx CKPT --name tiny` of the tiny Glow, as a user runs it:
    (role -> engine, what the command printed)."""

    def export(out: Path) -> None:
        from cli_helpers import InProcessCli

        from genexport.cli import main

        code, stdout, err = InProcessCli(main, "genexport").run(
            "onnx", glow_checkpoint, "--out", out, "--name", "tiny"
        )
        assert code == 0, err
        (out / "stdout.txt").write_text(stdout)

    out = _made_once(tmp_path_factory, "glow-engines", export)
    engines = {role: out / f"tiny.{role}.onnx" for role in ("generate", "density")}
    return engines, (out / "stdout.txt").read_text()


@pytest.fixture(scope="session")
def glow_exported(glow_export_run) -> dict[str, Path]:
    """role -> engine (`tiny.generate.onnx`, `tiny.density.onnx`) of the tiny Glow.
    Shared by the session: read them, never modify them."""
    return glow_export_run[0]


@pytest.fixture(scope="session")
def vae_exported(vae_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """role -> engine (encode, decode, elbo) of the tiny VAE; read-only, like glow_exported."""

    def export(out: Path) -> None:
        from genexport.export import export_checkpoint

        export_checkpoint(vae_checkpoint, out, name="tiny")

    out = _made_once(tmp_path_factory, "vae-engines", export)
    return {role: out / f"tiny.{role}.onnx" for role in ("encode", "decode", "elbo")}
