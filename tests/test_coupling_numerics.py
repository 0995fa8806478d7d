"""Numerically safe couplings and log-weights: Glow's scale has a floor in
both directions (exact inverses, finite far from the data), checkpoints from
before the floor reload as trained, and the stable log-sigmoid behind the
Bernoulli likelihood stays finite where log(sigmoid) is not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gentrain.models import Glow, GlowConfig
from gentrain.models.glow.layers import SCALE_FLOOR, AffineCoupling
from gentrain.models.stable import log_sigmoid
from gentrain.models.vae.likelihoods import Bernoulli


def _coupling(push: float) -> AffineCoupling:
    """A coupling whose raw scale h is pushed to `push` (very negative: s -> 0)."""
    torch.manual_seed(0)
    coupling = AffineCoupling(channels=4, hidden=8)
    with torch.no_grad():
        coupling.net.out.conv.weight.normal_(0, 0.1)
        coupling.net.out.conv.bias[1::2].fill_(push)
    return coupling.eval()


def test_the_scale_never_drops_below_its_floor_and_the_reverse_stays_finite() -> None:
    coupling = _coupling(push=-500.0)  # sigmoid(h + 2) underflows to 0
    x = torch.randn(8, 4, 6, 6)
    _, log_scale = coupling._shift_log_scale(x[:, :2])
    assert torch.allclose(log_scale, torch.full_like(log_scale, math.log(SCALE_FLOOR)))
    y, logdet = coupling(x)
    back, logdet_back = coupling.inverse(y)
    assert torch.isfinite(logdet).all() and torch.allclose(back, x, atol=1e-5)
    assert torch.allclose(logdet + logdet_back, torch.zeros(8), atol=1e-3)
    far = coupling(torch.full((2, 4, 6, 6), 1e6))[1]  # far from any data
    assert torch.isfinite(far).all()
    huge = coupling.inverse(torch.full((2, 4, 6, 6), 1e30))[0]
    assert torch.isfinite(huge).all()


def test_a_checkpoint_from_before_the_floor_reloads_with_the_old_coupling() -> None:
    torch.manual_seed(0)
    model = Glow(GlowConfig((1, 8, 8), levels=1, depth=1, hidden=8))
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("scale_floor")}
    model.load_state_dict(old)  # strict: the missing floor is filled in as 0
    coupling = model.levels[0].steps[0].layers[2].eval()
    assert coupling.scale_floor.item() == 0.0
    with torch.no_grad():
        coupling.net.out.conv.weight.normal_(0, 0.3)  # a trained coupling, not the identity
    x = torch.randn(3, 4, 4, 4)
    h = coupling.net(x[:, :2])
    expected = (x[:, 2:] + h[:, 0::2]) * torch.sigmoid(h[:, 1::2] + 2.0)  # the old formula
    assert torch.allclose(coupling(x)[0][:, 2:], expected, atol=1e-6)
    fresh = Glow(model.config).levels[0].steps[0].layers[2]
    assert fresh.scale_floor.item() == pytest.approx(SCALE_FLOOR)


@pytest.mark.parametrize("x", [-1e4, -200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0, 1e4])
def test_log_sigmoid_is_finite_and_exact_where_log_of_sigmoid_is_not(x: float) -> None:
    value = torch.tensor([x])
    assert torch.isfinite(log_sigmoid(value)).all()
    assert torch.allclose(log_sigmoid(value), F.logsigmoid(value), rtol=1e-6, atol=1e-7)


def test_bernoulli_log_prob_is_minus_the_cross_entropy_and_finite_at_any_logit() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 5, 5)
    logits = torch.randn(4, 1, 5, 5) * 300  # far beyond where sigmoid underflows
    bernoulli = Bernoulli(None)  # it reads nothing from the config
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    got = bernoulli.log_prob(x, logits)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, expected, rtol=1e-5)


def test_a_checkpoint_from_before_the_floor_passes_the_loaders_weight_check() -> None:
    from gentrain.checkpoint import model_from_checkpoint

    torch.manual_seed(0)
    model = Glow(GlowConfig((1, 8, 8), levels=1, depth=1, hidden=8))
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("scale_floor")}
    payload = {"family": "glow", "model_config": model.config.to_dict(), "model": old}
    loaded = model_from_checkpoint(payload, "glow")
    assert loaded.levels[0].steps[0].layers[2].scale_floor.item() == 0.0
    assert set(old) < set(loaded.state_dict())  # the buffer was filled, nothing else changed
