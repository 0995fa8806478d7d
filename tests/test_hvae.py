"""Hierarchical VAE: the per-group KLs agree with the math (non-negative,
closed form = Monte Carlo through the model's own top-down pass), log w is
per image, training lowers the loss on MNIST, fixed groups and temperature 0
sample as documented, the KL warm-up resumes exactly, and both engines match
PyTorch and run in genrun with gentrain's numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import genrun
from genexport.export import export_checkpoint
from genrun.errors import UserError
from genrun.readers import DataSplit, ImageSet
from genrun.sampler import BlockNoise
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.models.hvae import HVAE, HVAEConfig
from gentrain.models.hvae.model import Normal
from gentrain.train import TrainConfig, Trainer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: with a second thread, synchronisation costs more
    than it saves, and on a busy machine much more (seconds per pass)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)


def _tiny(shape=(1, 16, 16), seed: int = 0, **options) -> HVAE:
    """16x16 images give two latent resolutions (4x4 and 8x8) at little cost."""
    torch.manual_seed(seed)
    values = {"groups": 3, "latent_channels": 2, "hidden": 8} | options
    return HVAE(HVAEConfig(shape, **values))


@pytest.fixture(scope="module")
def crops(mnist) -> DataSplit:
    """Centre 16x16 crops of real MNIST digits: two latent resolutions (4x4,
    8x8), a fraction of the cost of 28x28."""
    return DataSplit(
        train=ImageSet(mnist.train.images[:256, :, 6:22, 6:22], mnist.train.labels[:256]),
        test=ImageSet(mnist.test.images[:32, :, 6:22, 6:22], mnist.test.labels[:32]),
        spec=mnist.spec,
    )


def _train_config(**overrides) -> TrainConfig:
    values = dict(batch_size=32, lr=2e-3, eval_every=10, ckpt_every=10, log_every=5, device="cpu")
    return TrainConfig(**{**values, **overrides})


def test_latent_layout_follows_the_data_shape() -> None:
    assert HVAEConfig((1, 28, 28)).latent_shapes() == [(4, 7, 7), (4, 7, 7), (4, 14, 14)]
    assert HVAEConfig((1, 8, 8), groups=2).latent_shapes() == [(4, 4, 4), (4, 4, 4)]
    assert HVAEConfig((3, 7, 7), groups=1).latent_shapes() == [(4, 7, 7)]
    with pytest.raises(UserError, match="at least 1"):
        HVAEConfig((1, 8, 8), groups=0)
    with pytest.raises(UserError, match="kl_warmup"):
        HVAEConfig((1, 8, 8), kl_warmup=-1)


def test_gaussian_kl_closed_form_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    q = Normal(torch.randn(3, 2, 2, 2), 0.5 * torch.randn(3, 2, 2, 2))
    p = Normal(torch.randn(3, 2, 2, 2), 0.5 * torch.randn(3, 2, 2, 2))
    z = q.sample(torch.randn(20_000, 3, 2, 2, 2))
    mc = q.log_prob(z) - p.log_prob(z)
    standard_error = mc.std(0) / math.sqrt(len(z))
    assert ((mc.mean(0) - q.kl(p)).abs() <= 4 * standard_error).all()
    assert torch.allclose(q.kl(q), torch.zeros(3), atol=1e-6)


def test_every_group_kl_is_non_negative_and_its_closed_form_is_the_monte_carlo_mean() -> None:
    """Through the model: per draw of z_<l, E[log q(z_l|x, z_<l) - log p(z_l|z_<l)]
    equals the closed-form KL at that draw; averaged over 4,000 draws."""
    model = _tiny(hidden=4).eval()
    with torch.no_grad():  # far from the prior, and priors that vary with z_<l
        for head in [*model.decoder.posterior_heads, *model.decoder.prior_heads]:
            head[-1].weight.mul_(4)
    x = model.to_float(_images(2, (1, 16, 16)))
    with torch.no_grad():
        _, kls, log_ratios = model._infer(x, model._noise(4000, len(x)))
    for group, (kl, log_ratio) in enumerate(zip(kls, log_ratios, strict=True)):
        assert (kl >= 0).all(), group
        assert kl.mean() > 0.1, group  # the test has something to compare
        difference = log_ratio - kl  # paired: the draw-to-draw spread of z_<l cancels
        standard_error = difference.double().std(0) / math.sqrt(len(difference))
        assert (difference.double().mean(0).abs() <= 4 * standard_error).all(), group


def test_log_weight_is_per_image_and_per_draw() -> None:
    model = _tiny().eval()
    x = model.to_float(_images(5, (1, 16, 16)))
    torch.manual_seed(1)
    eps = model._noise(3, 5)
    with torch.no_grad():
        batched = model.log_weight(x, eps)
        single = torch.stack(
            [
                torch.cat(
                    [
                        model.log_weight(x[i : i + 1], [e[k, i : i + 1] for e in eps])
                        for i in range(5)
                    ]
                )
                for k in range(3)
            ]
        )
    assert batched.shape == (3, 5)
    assert torch.allclose(batched, single, rtol=0, atol=1e-3)


def test_training_lowers_the_negative_elbo_on_mnist(mnist) -> None:
    model = _tiny(mnist.shape, groups=2, hidden=8, kl_warmup=0)
    images = torch.from_numpy(mnist.train.images[:480])  # 15 batches of 32
    test = torch.from_numpy(mnist.test.images[:64])

    def held_out_nelbo() -> float:
        model.eval()
        torch.manual_seed(0)
        value = model.evaluate(test, iw_samples=1)["nelbo"].mean().item()
        model.train()
        return value

    before = held_out_nelbo()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(30):
        start = 32 * (step % 15)
        loss = model.objective(images[start : start + 32]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model.train_step.item() == 30
    assert held_out_nelbo() < before - 100


def test_fixed_levels_share_their_latents_and_only_those() -> None:
    model = _tiny()
    for fixed in (0, 1, 2, 3):
        torch.manual_seed(0)
        images, latents = model.sample_with_latents(6, temperature=1.0, fixed_levels=fixed)
        assert images.shape == (6, 1, 16, 16) and images.dtype == torch.uint8
        for group, z in enumerate(latents):
            shared = bool((z == z[:1]).all())
            assert shared == (group < fixed), (fixed, group)
    assert model.training  # sampling ran in eval mode and put the mode back
    with pytest.raises(UserError, match="fixed_levels must be from 0 to 3"):
        model.sample(2, fixed_levels=4)


def test_temperature_zero_is_deterministic() -> None:
    model = _tiny()
    torch.manual_seed(0)
    first = model.sample(4, temperature=0.0)
    torch.manual_seed(1)
    second = model.sample(4, temperature=0.0)
    assert torch.equal(first, second)
    assert (first == first[:1]).all()
    torch.manual_seed(1)
    assert not torch.equal(model.sample(4, temperature=1.0), second)


def test_resume_continues_the_kl_warmup_exactly(crops, tmp_path) -> None:
    def hvae() -> HVAE:
        return _tiny(crops.shape, groups=2, hidden=4, kl_warmup=15)

    whole = Trainer(hvae(), crops, _train_config(steps=20), tmp_path / "a")
    whole.fit()
    first = Trainer(hvae(), crops, _train_config(steps=10), tmp_path / "b")
    first.fit()
    payload = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    # The trainer's no-grad init pass and the test evaluations are not steps.
    assert payload["model"]["train_step"].item() == 10
    resumed = Trainer(hvae(), crops, _train_config(steps=20), tmp_path / "b", resume=payload)
    assert resumed.model.kl_weight() == pytest.approx(10 / 15)
    resumed.fit()
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.model.train_step.item() == 20 and resumed.model.kl_weight() == 1.0


@pytest.fixture(scope="module")
def engines(crops, tmp_path_factory) -> tuple[dict, HVAE]:
    """Both graphs of a tiny HVAE trained 4 steps on the crops."""
    out = tmp_path_factory.mktemp("hvae")
    model = _tiny(crops.shape, groups=2, hidden=4, kl_warmup=2)
    Trainer(model, crops, _train_config(steps=4, eval_every=4, ckpt_every=4), out).fit()
    paths = {engine.graph.role: engine.path for engine in export_checkpoint(out / "checkpoint.pt")}
    return paths, model_from_checkpoint(load_checkpoint(out / "checkpoint.pt"))


@pytest.mark.parametrize("role", ["generate", "elbo"])
def test_export_parity_and_manifest(engines, role) -> None:
    paths, _ = engines
    manifest = genrun.load(paths[role]).manifest
    (check,) = manifest.parity
    assert check.batch_sizes == [1, 7, 64] and not check.failures()
    assert manifest.latent_shapes == [[2, 4, 4], [2, 8, 8]]
    names = [spec.name for spec in manifest.inputs]
    if role == "generate":
        assert names == ["noise_0", "noise_1", "temperature"]
        assert check.max_abs_error["images"] <= 1e-4 and "sigma_l" in manifest.temperature
    else:
        assert names == ["images", "eps_0", "eps_1"]
        assert [spec.name for spec in manifest.outputs] == ["log_weight"]


def test_genrun_samples_with_fixed_levels_and_scores_like_gentrain(engines, crops) -> None:
    paths, model = engines
    sampler = genrun.Sampler(genrun.load(paths["generate"]))
    images = sampler.sample(5, temperature=1.0, seed=0, fixed_levels=1)
    assert images.shape == (5, 1, 16, 16) and images.dtype == np.uint8
    # Same noise, temperature and fixed first group as gentrain's generate.
    noise = [torch.from_numpy(n) for n in BlockNoise(0, model.config.latent_shapes()).take(0, 5)]
    noise[0] = noise[0][:1].expand(5, -1, -1, -1)
    with torch.no_grad():
        params, _ = model.generate(noise, 1.0)
    expected = (model.decoder.likelihood.mean(params).clamp(0, 1) * 255).round().to(torch.uint8)
    assert np.abs(images.astype(int) - expected.numpy().astype(int)).max() <= 1

    k, test = 16, crops.test.images[:6]
    nll = genrun.Scorer(genrun.load(paths["elbo"])).nll(test, iw_samples=k, seed=3, batch_size=32)
    draws = BlockNoise(3, model.config.latent_shapes()).take(0, len(test) * k)  # rows i * k + j
    eps = [torch.from_numpy(d.reshape(len(test), k, *d.shape[1:])).transpose(0, 1) for d in draws]
    with torch.no_grad():
        log_w = model.log_weight(model.to_float(torch.from_numpy(test)), eps).double()
    expected = -(torch.logsumexp(log_w, 0) - math.log(k)) + model.discretization_term()
    assert np.allclose(nll, expected.numpy(), rtol=0, atol=1e-3)
    # gentrain's own IWAE estimate, on its own draws, agrees within 4 standard
    # errors of the difference of two such means (each about std(log w) / sqrt(K N)).
    torch.manual_seed(0)
    gentrain_nll = model.evaluate(torch.from_numpy(test), iw_samples=k)["nll"].double()
    standard_error = math.sqrt(2) * log_w.std(0).mean().item() / math.sqrt(k * len(test))
    assert abs(gentrain_nll.mean().item() - nll.mean()) < 4 * standard_error
