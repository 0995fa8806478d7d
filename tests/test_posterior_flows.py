"""Planar and radial posterior flows (Rezende & Mohamed 2015): log-dets equal
autograd's, the invertibility constraints hold for any raw parameters, the
flowed density integrates to one, a VAE with a planar posterior trains on
MNIST, its elbo engine matches PyTorch, and the options are checked."""

from __future__ import annotations

import math

import pytest
import torch
from cli_helpers import InProcessCli
from flow_helpers import assert_invertible
from training_helpers import first_and_last_losses

from genexport.export import export_checkpoint
from genrun.errors import UserError
from genrun.manifest_io import read_from_onnx
from genrun.readers import load_data
from gentrain.cli import main
from gentrain.models import VAE, VAEConfig
from gentrain.models.vae.likelihoods import LOG_2PI
from gentrain.models.vae.posterior_flows import PlanarFlow, PosteriorFlow, RadialFlow
from gentrain.train import TrainConfig, Trainer

FLOWS = {"planar": PlanarFlow, "radial": RadialFlow}
CLI = InProcessCli(main, "gentrain")


@pytest.mark.parametrize("kind", FLOWS)
def test_log_det_equals_autograd_jacobian(kind) -> None:
    generator = torch.Generator().manual_seed(0)
    flow = FLOWS[kind](latent_dim=3)
    for _ in range(10):
        params = 2 * torch.randn(1, flow.num_params, generator=generator, dtype=torch.float64)
        z = torch.randn(1, 3, generator=generator, dtype=torch.float64)
        assert_invertible(flow, z, params, logdet_tol=1e-10)


def test_stacked_log_dets_sum_over_layers_and_broadcast_over_samples() -> None:
    generator = torch.Generator().manual_seed(1)
    flow = PosteriorFlow("planar", 3, latent_dim=2).double()
    params = torch.randn(4, flow.num_params, generator=generator, dtype=torch.float64)
    z = torch.randn(5, 4, 2, generator=generator, dtype=torch.float64)  # (K, N, k)
    out, log_det = flow(z, params)
    assert out.shape == z.shape and log_det.shape == (5, 4)
    for n in range(4):
        jacobian = torch.autograd.functional.jacobian(lambda v, n=n: flow(v, params[n])[0], z[0, n])
        expected = torch.linalg.slogdet(jacobian).logabsdet
        assert log_det[0, n].item() == pytest.approx(expected.item(), abs=1e-10)


def test_planar_constraint_holds_for_adversarial_parameters() -> None:
    flow = PlanarFlow(latent_dim=2)
    w = torch.tensor([[1.0, 0.0], [3.0, -4.0], [1e-3, 1e-3], [100.0, 0.0]], dtype=torch.float64)
    # u points against w with w^T u from -1e4 to -1.5: raw maps that fold (non-invertible).
    u = (
        -torch.tensor([1e4, 50.0, 1.5, 3.0], dtype=torch.float64)[:, None]
        * w
        / (w * w).sum(-1, keepdim=True)
    )
    params = torch.cat([u, w, torch.zeros(4, 1, dtype=torch.float64)], dim=1)
    u_hat, w_out, _, wu_hat = flow.constrained(params)
    assert (wu_hat >= -1).all()
    torch.testing.assert_close((w_out * u_hat).sum(-1, keepdim=True), wu_hat)
    # Then 1 + u_hat^T psi(z) > 0 everywhere off the hyperplane w^T z + b = 0.
    z = torch.randn(1000, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert flow(z, params)[1].isfinite().all()
    # Without the constraint the same parameters fold space: 1 + u^T psi < 0 near the hyperplane.
    raw = 1 + (1 - torch.tanh((w * z).sum(-1)) ** 2) * (w * u).sum(-1)
    assert (raw < 0).any()


def test_radial_constraint_holds_for_adversarial_parameters() -> None:
    flow = RadialFlow(latent_dim=3)
    raw = torch.tensor([[-50.0, -1e4], [20.0, -1e4], [0.0, -30.0], [-5.0, 40.0]])
    params = torch.cat([torch.zeros(4, 3), raw], dim=1)
    _, alpha, beta = flow.constrained(params)
    assert (alpha > 0).all() and (beta >= -alpha).all()
    z = torch.randn(1000, 1, 3, generator=torch.Generator().manual_seed(0))
    assert flow(z, params)[1].isfinite().all()


@pytest.mark.parametrize("kind", FLOWS)
def test_flowed_density_integrates_to_one(kind) -> None:
    """E_{z_0 ~ q_0}[p(z_K) / q_K(z_K)] = integral of p = 1 only if log q_K =
    log q_0 - sum log|det| is a normalised density (a wrong sign or a missing
    layer breaks it)."""
    generator = torch.Generator().manual_seed(0)
    flow = PosteriorFlow(kind, 4, latent_dim=2).double()
    params = torch.randn(1, flow.num_params, generator=generator, dtype=torch.float64)
    mu, sigma = torch.tensor([0.3, -0.2], dtype=torch.float64), 1.5  # q_0 wider than p
    eps = torch.randn(400_000, 2, generator=generator, dtype=torch.float64)
    z0 = mu + sigma * eps
    z, log_det = flow(z0, params)
    log_q0 = (-0.5 * (LOG_2PI + 2 * math.log(sigma) + eps**2)).sum(-1)
    log_p = (-0.5 * (LOG_2PI + z**2)).sum(-1)
    weights = torch.exp(log_p - (log_q0 - log_det))
    stderr = weights.std().item() / math.sqrt(len(weights))
    assert abs(weights.mean().item() - 1) < 4 * stderr + 1e-3, (weights.mean(), stderr)


def test_vae_with_planar_flow_trains_on_mnist(mnist) -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig((1, 28, 28), latent_dim=8, hidden=128, posterior_flow="planar:4"))
    assert model.config.kl == "mc"  # the default with a flow
    first, last = first_and_last_losses(model, mnist.train.images)
    assert last < 0.6 * first, (first, last)
    metrics = model.evaluate(torch.as_tensor(mnist.train.images[:16]), iw_samples=20)
    assert (metrics["nll"] <= metrics["nelbo"] + 5).all()  # one-draw nelbo vs the K=20 bound


def test_log_weight_includes_the_flow() -> None:
    """log w = log p(x|z_K) + log p(z_K) - log q_0(z_0|x) + sum log|det J|."""
    torch.manual_seed(0)
    model = VAE(VAEConfig((1, 8, 8), latent_dim=2, hidden=16, posterior_flow="radial:2"))
    x = torch.rand(3, 1, 8, 8)
    eps = torch.randn(3, 2)
    mu, logvar, params = model.encoder.statistics(x)
    z0 = mu + torch.exp(0.5 * logvar) * eps
    z, log_det = model.posterior_flow(z0, params)
    log_q0 = (-0.5 * (LOG_2PI + logvar + eps**2)).sum(-1)
    log_p = (-0.5 * (LOG_2PI + z**2)).sum(-1)
    expected = model.decoder.log_prob(x, z) + log_p - log_q0 + log_det
    torch.testing.assert_close(model.log_weight(x, eps), expected)
    assert not torch.allclose(log_det, torch.zeros(3))


def test_elbo_engine_with_a_planar_flow_passes_parity(tmp_path) -> None:
    digits = load_data("digits")
    torch.manual_seed(0)
    model = VAE(VAEConfig(digits.shape, latent_dim=4, hidden=32, posterior_flow="planar:2"))
    small = dict(steps=4, batch_size=32, eval_every=4, ckpt_every=4, log_every=4, device="cpu")
    Trainer(model, digits, TrainConfig(**small), tmp_path).fit()
    (engine,) = export_checkpoint(tmp_path / "checkpoint.pt", tmp_path, "elbo")
    manifest = read_from_onnx(engine.path)
    assert manifest.checkpoint.model_config["posterior_flow"] == "planar:2"
    (check,) = manifest.parity
    assert check.batch_sizes == [1, 7, 64] and not check.failures()


def test_options_are_checked_and_old_configs_load() -> None:
    shape = (1, 8, 8)
    for spec in ("planar", "planar:0", "iaf:4", "radial:x"):
        with pytest.raises(UserError, match="planar:K or radial:K"):
            VAEConfig(shape, posterior_flow=spec)
    with pytest.raises(UserError, match="no closed form"):
        VAEConfig(shape, posterior_flow="planar:2", kl="closed")
    # A checkpoint written before posterior flows existed: no key, kl stored.
    old = VAEConfig.from_dict({"data_shape": shape, "latent_dim": 3, "kl": "closed"})
    assert old.posterior_flow == "" and VAE(old).encoder.net[-1].out_features == 6
    assert VAEConfig(shape).kl == "closed"


def test_cli_refuses_closed_kl_with_a_flow(tmp_path) -> None:
    result = CLI.run(
        "fit", "vae", "--posterior-flow", "planar:2", "--kl", "closed", "--out", tmp_path
    )
    CLI.assert_one_line_error(result, "no closed form")
    result = CLI.run("fit", "vae", "--posterior-flow", "sylvester:2", "--out", tmp_path)
    CLI.assert_one_line_error(result, "planar:K or radial:K")
