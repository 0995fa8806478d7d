"""Shared pytest fixtures. Must not import torch: the genrun tests run without it."""

from pathlib import Path

import pytest

# The clone's parent holds shared/ both here and in CI (read-only MNIST subset).
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist():
    """The shared MNIST subset (8,000 train / 1,000 test), read once per session."""
    from genrun.readers import load_data

    return load_data(f"mnist:{MNIST_DIR}")
