"""Glow: every layer and the whole flow invert, log-dets are exact, ActNorm's
data-dependent init survives a save/load, and bad shapes are refused."""

from __future__ import annotations

import io
import math

import pytest
import torch
from flow_helpers import assert_invertible

from genrun.errors import UserError
from gentrain.models.glow import Glow, GlowConfig
from gentrain.models.glow.layers import (
    ActNorm,
    AffineCoupling,
    FlowStep,
    GaussianStandardize,
    InvConv1x1,
    Squeeze,
)
from gentrain.models.glow.model import GlowLevel
from gentrain.models.quantization import bits_per_dim, dequantize, quantize


def _perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Move every parameter off its identity-like init so the tests see a
    non-trivial map (zero-initialised last convs would make couplings the
    identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def _layers():
    yield ActNorm(4)
    yield InvConv1x1(4, lu=True)
    yield InvConv1x1(4, lu=False)
    yield AffineCoupling(4, hidden=8)
    yield AffineCoupling(4, hidden=8, additive=True)
    yield FlowStep(4, hidden=8)
    yield Squeeze()


@pytest.mark.parametrize("layer", list(_layers()), ids=lambda m: type(m).__name__)
def test_layer_inverts_and_logdet_matches_autograd(layer: torch.nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 4)
    layer.train()
    layer(x)  # data-dependent init where there is one
    _perturb(layer)
    layer.eval()
    assert_invertible(layer, x, tol=1e-4, logdet_tol=1e-6)


@pytest.mark.parametrize("cond", [2, None], ids=["split", "top"])
def test_prior_inverts_and_logdet_is_exact(cond: int | None) -> None:
    """The split prior standardises z = x[:, :2] given h = x[:, 2:] (passed
    through); the top prior standardises all of x."""
    torch.manual_seed(0)
    prior = GaussianStandardize(2, cond, (4, 4))
    _perturb(prior)
    x = torch.randn(3, 2 if cond is None else 4, 4, 4)
    if cond is not None:
        assert torch.equal(prior(x)[0][:, 2:], x[:, 2:])
    assert_invertible(prior, x, tol=1e-5, logdet_tol=1e-6)


@pytest.mark.parametrize("top", [False, True], ids=["split", "top"])
def test_level_inverts_and_logdet_is_exact(top: bool) -> None:
    """A whole level (squeeze, steps, prior) is one composite transform."""
    torch.manual_seed(0)
    config = GlowConfig((1, 4, 4), levels=2, depth=2, hidden=8)
    level = GlowLevel(1, (4, 4), config, top)
    x = torch.randn(3, 1, 4, 4)
    level.train()
    level(x)  # ActNorm init
    _perturb(level)
    level.eval()
    assert_invertible(level, x, tol=1e-4, logdet_tol=1e-6)


@pytest.mark.parametrize("shape,levels", [((1, 8, 8), 2), ((1, 28, 28), 2), ((3, 8, 8), 3)])
def test_glow_round_trip(shape: tuple[int, int, int], levels: int) -> None:
    torch.manual_seed(0)
    model = Glow(GlowConfig(shape, levels=levels, depth=3, hidden=16))
    model.objective(torch.randint(0, 256, (16, *shape), dtype=torch.uint8))  # init
    _perturb(model, 0.02)
    model.eval()
    y = torch.rand(5, *shape) - 0.5
    latents, _ = model(y)
    assert [tuple(z.shape[1:]) for z in latents] == model.config.latent_shapes()
    assert (model.reverse(latents) - y).abs().max() < 1e-4


def test_glow_log_prob_matches_autograd_jacobian() -> None:
    """The whole multi-scale flow's log-density equals the change of variables
    computed by brute force on a 1x4x4 input."""
    torch.manual_seed(0)
    model = Glow(GlowConfig((1, 4, 4), levels=2, depth=2, hidden=8))
    model.objective(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8))
    _perturb(model, 0.05)
    model.eval().double()
    y = (torch.rand(1, 1, 4, 4) - 0.5).double()

    def flat_latents(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in model(v)[0]], 1)

    jacobian = torch.autograd.functional.jacobian(flat_latents, y).reshape(16, 16)
    eps = flat_latents(y)
    expected = (-0.5 * (eps**2 + math.log(2 * math.pi))).sum() + torch.linalg.slogdet(jacobian)[1]
    assert abs(model.log_prob(y).item() - expected.item()) < 1e-6


def test_actnorm_init_survives_save_and_load() -> None:
    torch.manual_seed(0)
    config = GlowConfig((1, 8, 8), levels=2, depth=2, hidden=8)
    model = Glow(config)
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8)
    model.objective(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = Glow(config)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    loaded.train()
    other = torch.randint(0, 64, (32, 1, 8, 8), dtype=torch.uint8)  # different stats
    loaded.objective(other)  # must not re-initialise
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(m.initialized for m in loaded.modules() if isinstance(m, ActNorm))


def test_temperature_zero_gives_the_mode_for_every_sample() -> None:
    torch.manual_seed(0)
    model = Glow(GlowConfig((1, 8, 8), levels=2, depth=2, hidden=8)).eval()
    samples = model.sample(4, temperature=0.0)
    assert samples.dtype == torch.uint8 and samples.shape == (4, 1, 8, 8)
    assert all(torch.equal(samples[0], s) for s in samples)


def test_quantization_round_trip_and_bits_per_dim() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(quantize(dequantize(x, 8), 8), x)
    five = quantize(dequantize(x, 5), 5)
    assert five.unique().numel() == 32
    # A uniform density on [-0.5, 0.5)^D is 8 bits/dim of the discrete image.
    assert bits_per_dim(torch.zeros(1), 256, 8).item() == pytest.approx(8.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"data_shape": (1, 28, 28), "levels": 3}, "--levels 2 or --size 32"),
        ({"data_shape": (1, 8, 8), "coupling": "spline"}, "unknown coupling"),
        ({"data_shape": (1, 8, 8), "n_bits": 9}, "n-bits"),
    ],
)
def test_bad_configs_are_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        GlowConfig(**kwargs)


def test_importance_weighted_dequantisation_bound(mnist) -> None:
    """bpd_iw is -log (1/K) sum_k p(y_k) of the very draws that give bpd, and
    never above their average (log-mean-exp >= mean: Jensen, draw by draw)."""
    torch.manual_seed(0)
    model = Glow(GlowConfig((1, 28, 28), levels=2, depth=2, hidden=16))
    x = torch.from_numpy(mnist.test.images[:32])
    model.objective(x)  # data-dependent init
    _perturb(model, 0.02)
    model.eval()
    torch.manual_seed(5)
    metrics = model.evaluate(x, iw_samples=6)
    torch.manual_seed(5)
    with torch.no_grad():
        draws = torch.stack(
            [
                bits_per_dim(model.log_prob(dequantize(x, 8, torch.rand(x.shape))), 784, 8)
                for _ in range(6)
            ]
        )
    assert torch.allclose(metrics["bpd"], draws[0])
    assert (metrics["bpd_iw"] <= draws.mean(0) + 1e-6).all()
    assert (metrics["bpd_iw"] < draws.mean(0)).any()
    assert set(model.evaluate(x)) == {"bpd", "bpd_density_at_centers", "nll"}
