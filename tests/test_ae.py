"""The deterministic autoencoder and its PCA baseline: training lowers the
MSE on real MNIST, PCA's training error is exactly the discarded variance, a
linear AE reaches PCA and never beats it, the CLI fits and evaluates (MSE
beside PCA's), both engines match PyTorch, and an AE refuses to sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from PIL import Image
from training_helpers import first_and_last_losses

import genrun
from genexport.export import export_checkpoint
from genrun.errors import UserError
from genrun.manifest_io import read_from_onnx
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.cli import main
from gentrain.models import AE, AEConfig
from gentrain.models.ae import PCA

CLI = InProcessCli(main, "gentrain")


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> Path:
    """A tiny AE (k = 2) trained 20 steps on the digits through the CLI."""
    out = tmp_path_factory.mktemp("ae")
    code, _, err = CLI.run(
        "fit", "ae", "--hidden", 32, "--steps", 20, "--eval-every", 10, "--out", out
    )
    assert code == 0, err
    return out


def test_mnist_training_lowers_the_mse(mnist) -> None:
    torch.manual_seed(0)
    model = AE(AEConfig((1, 28, 28), latent_dim=8, hidden=128))
    first, last = first_and_last_losses(model, mnist.train.images, "mse")
    assert last < 0.6 * first, (first, last)


def test_pca_training_error_is_the_sum_of_the_discarded_eigenvalues(digits) -> None:
    images = torch.as_tensor(digits.train.images)
    x = images.double() / 255
    # The eigenvalues of the covariance (normalised by N), computed independently.
    covariance = torch.cov(x.reshape(len(x), -1).T, correction=0)
    eigenvalues = torch.linalg.eigvalsh(covariance).flip(0)
    for k in (1, 2, 16, 63):
        pca = PCA.fit(images, k)
        error = pca.squared_error(x).mean().item()
        assert error == pytest.approx(eigenvalues[k:].sum().item(), rel=1e-9, abs=1e-12)
        assert error == pytest.approx(pca.discarded_variance(), rel=1e-9, abs=1e-12)
        assert torch.allclose(pca.components @ pca.components.T, torch.eye(k).double())


def test_linear_ae_approaches_pca_and_never_beats_it(digits) -> None:
    """The lecture: with linear f and g the best solution is the PCA projection."""
    images = torch.as_tensor(digits.train.images[:500])
    pca_error = PCA.fit(images, 4).discarded_variance()
    torch.manual_seed(0)
    model = AE(AEConfig(digits.shape, latent_dim=4, hidden=16, linear=True))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(250):  # full batch
        loss = model.objective(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        error = model.objective(images).loss.item()
    assert pca_error - 1e-4 < error < 1.01 * pca_error, (error, pca_error)


def test_sample_is_a_user_error(digits) -> None:
    with pytest.raises(UserError, match="no prior"):
        AE(AEConfig(digits.shape, hidden=8)).sample(4)


def test_bad_config_is_a_user_error(digits) -> None:
    with pytest.raises(UserError, match="arch"):
        AEConfig(digits.shape, arch="resnet")
    with pytest.raises(UserError, match="AE config: unknown keys: kl"):
        AEConfig.from_dict({"data_shape": digits.shape, "kl": "mc"})


def test_fit_writes_a_reconstruction_grid(ae_run) -> None:
    assert not (ae_run / "samples.png").exists()
    # 4 pairs of rows (8 test images, then their reconstructions) of 8 x 8 digits, upscaled 8x.
    assert Image.open(ae_run / "reconstructions.png").size == ((8 * 8 + 9 * 2) * 8,) * 2


def test_eval_reports_mse_and_pca_mse(ae_run, digits, tmp_path) -> None:
    code, out, err = CLI.run("eval", ae_run / "checkpoint.pt", "--json", tmp_path / "eval.json")
    assert code == 0, err
    assert "pca_mse" in out
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    model = model_from_checkpoint(load_checkpoint(ae_run / "checkpoint.pt"))
    test = torch.as_tensor(digits.test.images)
    pca = PCA.fit(torch.as_tensor(digits.train.images), 2)
    x = test.float() / 255
    assert metrics["pca_mse"]["mean"] == pytest.approx(pca.squared_error(x).mean().item())
    assert metrics["mse"]["mean"] == pytest.approx(model.squared_error(x).mean().item(), rel=1e-5)
    # Mean over images of a sum over 64 pixels in [0, 1]: between 0 and 64.
    assert 0 < metrics["pca_mse"]["mean"] < metrics["mse"]["mean"] < 64  # 20 steps: PCA wins


def test_sample_command_is_a_one_line_error(ae_run, tmp_path) -> None:
    result = CLI.run("sample", ae_run / "checkpoint.pt", "--out", tmp_path / "grid.png")
    CLI.assert_one_line_error(result, "no prior")


def test_engines_match_pytorch_on_real_images(ae_run, digits, tmp_path) -> None:
    engines = {e.graph.role: e.path for e in export_checkpoint(ae_run / "checkpoint.pt", tmp_path)}
    assert sorted(engines) == ["decode", "encode"]
    for role, path in engines.items():
        manifest = read_from_onnx(path)
        assert manifest.family == "ae" and manifest.role == role
        assert manifest.latent_shapes == [[2]]
        (check,) = manifest.parity
        assert check.batch_sizes == [1, 7, 64] and not check.failures()
    model = model_from_checkpoint(load_checkpoint(ae_run / "checkpoint.pt"))
    images = digits.test.images[:50]
    codes = genrun.load(engines["encode"], provider="cpu").run(images=images)["z"]
    expected_codes = model.encode_mean(torch.as_tensor(images)).numpy()
    np.testing.assert_allclose(codes, expected_codes, atol=1e-4)
    pixels = genrun.load(engines["decode"], provider="cpu").run(z=codes)["pixels"]
    expected = model.decode_mean(torch.as_tensor(codes)).numpy()
    assert pixels.dtype == np.uint8 and np.abs(pixels.astype(int) - expected).max() <= 1
