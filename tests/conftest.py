"""Shared pytest fixtures: the data, tiny trained checkpoints and their engines,
each made once per test session.

Must not import torch at module level: the genrun tests run without it (the
fixtures that train import it when first used)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def glow_checkpoint(digits, tmp_path_factory) -> Path:
    """A tiny Glow (levels 2, depth 2, hidden 16) trained 4 steps on the digits."""
    import torch

    from gentrain.models import Glow, GlowConfig
    from gentrain.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("glow")
    torch.manual_seed(0)
    model = Glow(GlowConfig(digits.shape, levels=2, depth=2, hidden=16))
    config = TrainConfig(optimizer="adamax", lr=2e-3, clip=50.0, device="cpu", **TINY_RUN)
    Trainer(model, digits, config, out).fit()
    return out / "checkpoint.pt"


@pytest.fixture(scope="session")
def vae_checkpoint(digits, tmp_path_factory) -> Path:
    """A tiny VAE (latent 4, hidden 32) trained 4 steps on the digits."""
    import torch

    from gentrain.models import VAE, VAEConfig
    from gentrain.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    model = VAE(VAEConfig(digits.shape, latent_dim=4, hidden=32))
    Trainer(model, digits, TrainConfig(device="cpu", **TINY_RUN), out).fit()
    return out / "checkpoint.pt"


def _export(checkpoint: Path, out: Path) -> dict[str, Path]:
    from genexport.export import export_checkpoint

    return {e.graph.role: e.path for e in export_checkpoint(checkpoint, out, name="tiny")}


@pytest.fixture(scope="session")
def glow_exported(glow_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """role -> engine (`tiny.generate.onnx`, `tiny.density.onnx`) of the tiny Glow.
    Shared by the session: read them, never modify them."""
    return _export(glow_checkpoint, tmp_path_factory.mktemp("glow-engines"))


@pytest.fixture(scope="session")
def vae_exported(vae_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """role -> engine (encode, decode, elbo) of the tiny VAE; read-only, like glow_exported."""
    return _export(vae_checkpoint, tmp_path_factory.mktemp("vae-engines"))
