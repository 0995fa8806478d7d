"""VAE: the KL and the bounds agree with the math (closed form vs Monte Carlo,
IWAE monotone in K, log w against the lecture's Gaussian formula), every
config builds and runs, training on MNIST lowers the loss, bad configs are refused."""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import asdict

import pytest
import torch
from training_helpers import first_and_last_losses

from genrun.errors import UserError
from gentrain.models.vae import VAE, VAEConfig
from gentrain.models.vae.likelihoods import LOGVAR_MIN
from gentrain.models.vae.model import GaussianEncoder, StandardNormalPrior
from gentrain.models.vae.networks import conv_stages


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)


def _tiny(seed: int = 0, **options) -> VAE:
    torch.manual_seed(seed)
    values = {"data_shape": (1, 8, 8), "latent_dim": 4, "hidden": 32} | options
    return VAE(VAEConfig(**values))


def _mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    values = values.double()
    return values.mean().item(), values.std().item() / math.sqrt(len(values))


def test_closed_form_kl_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    eps = torch.randn(20_000, 5, 3)
    z = GaussianEncoder.sample(mu, logvar, eps)
    mc = GaussianEncoder.log_prob(z, mu, logvar) - StandardNormalPrior(3).log_prob(z)
    closed = GaussianEncoder.kl_to_standard_normal(mu, logvar)
    standard_error = mc.std(0) / math.sqrt(len(eps))
    assert ((mc.mean(0) - closed).abs() <= 4 * standard_error).all()


def test_iwae_bound_rises_with_k_and_nll_is_below_nelbo() -> None:
    # A sharp Gaussian decoder makes the untrained q(z|x) a poor proposal, so
    # more samples help visibly.
    model = _tiny(likelihood="gaussian", sigma=0.3)
    x = _images(128, (1, 8, 8))
    bounds = {k: model.iwae_bound(x, k).detach() for k in (1, 10, 100)}
    for low, high in ((1, 10), (10, 100)):
        # Per-image differences cancel the image-to-image spread.
        rise, standard_error = _mean_and_standard_error(bounds[high] - bounds[low])
        assert rise > 4 * standard_error
    metrics = model.evaluate(x, iw_samples=100)
    assert metrics["nll"].mean() < metrics["nelbo"].mean()


def test_single_sample_iwae_is_the_elbo_in_expectation() -> None:
    model = _tiny(likelihood="gaussian")
    x = _images(16, (1, 8, 8)).repeat(200, 1, 1, 1)
    iwae_1 = model.iwae_bound(x, 1).detach()
    for kl in ("closed", "mc"):
        gap, standard_error = _mean_and_standard_error(iwae_1 - model.elbo(x, kl=kl).detach())
        assert abs(gap) < 4 * standard_error


def test_log_weight_matches_the_lecture_gaussian_formula() -> None:
    sigma, k, d = 0.3, 2, 4
    model = _tiny(data_shape=(1, 2, 2), latent_dim=k, hidden=3, likelihood="gaussian", sigma=sigma)
    x = torch.rand(3, 1, 2, 2)
    eps = torch.randn(3, k)
    log_w = model.log_weight(x, eps).double()

    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(x))
        z = mu + torch.exp(0.5 * logvar) * eps.double()
        mu_dec = model.decode(z.float()).double().flatten(1)
    x, log_2pi = x.double().flatten(1), math.log(2 * math.pi)
    expected = (
        -k / 2 * log_2pi
        - 0.5 * (z**2).sum(1)
        - d / 2 * log_2pi
        - 0.5 * math.log(sigma ** (2 * d))
        - ((x - mu_dec) ** 2).sum(1) / (2 * sigma**2)
        + k / 2 * log_2pi
        + 0.5 * logvar.sum(1)
        + 0.5 * ((z - mu) ** 2 / torch.exp(logvar)).sum(1)
    )
    assert torch.allclose(log_w, expected, atol=1e-4)


def test_log_weight_is_deterministic_and_batches_over_samples() -> None:
    model = _tiny()
    x = model.to_float(_images(5, (1, 8, 8)))
    eps = torch.randn(3, 5, 4)
    state = torch.get_rng_state()
    batched = model.log_weight(x, eps)
    assert torch.equal(torch.get_rng_state(), state)  # no random op inside
    one_by_one = torch.stack([model.log_weight(x, e) for e in eps])
    assert batched.shape == (3, 5)
    assert torch.allclose(batched, one_by_one, atol=1e-5)


def test_iwae_bound_chunks_are_one_logsumexp() -> None:
    model = _tiny()
    x = _images(5, (1, 8, 8))
    torch.manual_seed(3)
    bound = model.iwae_bound(x, 7, chunk=10)  # 2 samples per pass: 2 + 2 + 2 + 1
    torch.manual_seed(3)
    eps = torch.cat([torch.randn(n, 5, 4) for n in (2, 2, 2, 1)])
    expected = torch.logsumexp(model.log_weight(model.to_float(x), eps), 0) - math.log(7)
    assert torch.allclose(bound, expected, atol=1e-4)


def test_nll_with_1000_samples_on_256_images_decodes_in_bounded_passes() -> None:
    # Peak memory follows the largest decoder pass: unchunked, K=1000 x 256
    # MNIST-sized images would be a 784 MB output tensor before activations.
    # Counting the images per pass is exact, where process RSS is allocator noise.
    model = _tiny(data_shape=(1, 28, 28), hidden=16)
    x = _images(256, (1, 28, 28))
    passes: list[int] = []
    model.decoder.register_forward_pre_hook(
        lambda _, args: passes.append(args[0].shape[:-1].numel())
    )
    metrics = model.evaluate(x, iw_samples=1000, chunk=4096)
    assert metrics["nll"].isfinite().all()
    assert max(passes) <= 4096
    assert sum(passes) == 256 + 1000 * 256  # the ELBO draw, then every importance sample once


def test_evaluate_is_deterministic_given_the_seed() -> None:
    model = _tiny()
    x = _images(8, (1, 8, 8))
    torch.manual_seed(5)
    first = model.evaluate(x, iw_samples=20)
    torch.manual_seed(5)
    second = model.evaluate(x, iw_samples=20)
    assert all(torch.equal(first[name], second[name]) for name in first)


SHAPES = [(1, 28, 28), (1, 8, 8), (3, 32, 32), (1, 7, 7)]
COMBINATIONS = list(
    itertools.product(
        ["mlp", "conv"], SHAPES, ["bernoulli", "gaussian", "gaussian-learned"], ["grey", "binary"]
    )
)


@pytest.mark.parametrize(
    ("arch", "shape", "likelihood", "pixels"),
    COMBINATIONS,
    ids=[f"{a}-{'x'.join(map(str, s))}-{lik}-{pix}" for a, s, lik, pix in COMBINATIONS],
)
def test_every_configuration_runs(arch, shape, likelihood, pixels) -> None:
    kl = "mc" if pixels == "binary" else "closed"  # both estimators, half the runs
    hidden = 8 if arch == "conv" else 16
    model = _tiny(
        data_shape=shape, arch=arch, hidden=hidden, likelihood=likelihood, pixels=pixels, kl=kl
    )
    x = _images(4, shape)

    objective = model.objective(x)
    assert objective.loss.shape == () and objective.loss.isfinite()
    assert set(objective.metrics) == {"nelbo", "rec", "kl"}
    assert all(isinstance(v, float) for v in objective.metrics.values())
    objective.loss.backward()

    metrics = model.evaluate(x, iw_samples=5, chunk=8)
    assert set(metrics) == {"nelbo", "rec", "kl", "nll", "bpd"}
    for value in metrics.values():
        assert value.shape == (4,) and value.dtype == torch.float32 and value.isfinite().all()

    images = model.sample(3, temperature=0.7)
    assert images.shape == (3, *shape) and images.dtype == torch.uint8


def test_conv_stages_halve_only_even_sides() -> None:
    assert [conv_stages(s, s) for s in (28, 8, 32, 7, 4)] == [2, 1, 3, 0, 0]


def test_samples_at_zero_temperature_are_the_mean_at_the_prior_mode() -> None:
    model = _tiny()
    images = model.sample(2, temperature=0.0)
    assert torch.equal(images[0], images[1])
    mean = model.decoder.likelihood.mean(model.decode(torch.zeros(1, 4))).detach()
    assert torch.equal(images[:1], (mean * 255).round().to(torch.uint8))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
def test_decoder_samples_follow_the_likelihood(likelihood: str) -> None:
    model = _tiny(likelihood=likelihood, sigma=0.05)
    z = torch.randn(2, 4)
    with torch.no_grad():
        draws = torch.stack([model.decoder.sample(z) for _ in range(2000)])
        mean = model.decoder.likelihood.mean(model.decode(z))
    assert draws.shape == (2000, 2, 1, 8, 8)
    if likelihood == "bernoulli":
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
    # Raw Gaussian means may leave [0, 1]; compare where they do not.
    inside = (mean > 0.01) & (mean < 0.99)
    assert (draws.mean(0) - mean)[inside].abs().max() < 0.05


def test_learned_variance_is_clamped() -> None:
    model = _tiny(likelihood="gaussian-learned")
    with torch.no_grad():
        model.decoder.likelihood.logvar.fill_(-100.0)
    assert torch.allclose(model.decoder.likelihood.log_variance(), torch.tensor(LOGVAR_MIN))
    assert model.objective(_images(4, (1, 8, 8))).loss.isfinite()


def test_mnist_training_lowers_the_loss(mnist) -> None:
    model = _tiny(data_shape=(1, 28, 28), latent_dim=20, hidden=400)
    first, last = first_and_last_losses(model, mnist.train.images)
    assert last < 0.6 * first, (first, last)


def test_config_survives_a_weights_only_checkpoint() -> None:
    config = VAEConfig((1, 28, 28), arch="conv", likelihood="gaussian-learned", kl="mc")
    buffer = io.BytesIO()
    torch.save({"config": asdict(config)}, buffer)
    buffer.seek(0)
    assert VAEConfig.from_dict(torch.load(buffer, weights_only=True)["config"]) == config


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("arch", "resnet", "mlp, conv"),
        ("likelihood", "poisson", "bernoulli, gaussian, gaussian-learned"),
        ("pixels", "colour", "grey, binary"),
        ("kl", "exact", "closed, mc"),
        ("latent_dim", 0, None),
        ("hidden", 0, None),
        ("depth", 0, None),
        ("sigma", 0.0, None),
        ("sigma", float("nan"), None),
        ("data_shape", (28, 28), None),
    ],
)
def test_bad_config_is_a_user_error(option, value, valid) -> None:
    values = {"data_shape": (1, 28, 28), option: value}
    with pytest.raises(UserError) as error:
        VAEConfig(**values)
    message = str(error.value)
    assert "\n" not in message and option in message
    if valid:
        assert valid in message


def test_unknown_checkpoint_keys_are_a_user_error() -> None:
    with pytest.raises(UserError, match="colour"):
        VAEConfig.from_dict({"data_shape": (1, 8, 8), "colour": "red"})


def test_unknown_kl_estimator_in_elbo_is_a_user_error() -> None:
    with pytest.raises(UserError, match="closed, mc"):
        _tiny().elbo(_images(2, (1, 8, 8)), kl="exact")
