"""Hostile and damaged checkpoints: one line before anything big is built.
A missing family, weights that do not fit the config, a config asking for
depth 10**6, NaN weights; and a fuzz of the bytes and of the config values."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import mutated

from genrun.errors import UserError
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from gentrain.models import VAE, Glow, GlowConfig, VAEConfig

FUZZ = settings(
    max_examples=30,
    derandomize=True,
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _payload(family: str = "glow") -> dict:
    torch.manual_seed(0)
    if family == "glow":
        model = Glow(GlowConfig((1, 8, 8), levels=1, depth=1, hidden=4))
    else:
        model = VAE(VAEConfig((1, 8, 8), latent_dim=2, hidden=8))
    return {
        "family": family,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "step": 0,
        "data": {"spec": "digits", "shape": [1, 8, 8]},
    }


def _load(path: Path):
    return model_from_checkpoint(load_checkpoint(path))


def _one_line(err: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_real_payload_loads(tmp_path) -> None:
    for family in ("glow", "vae"):
        model = _load(save_checkpoint(tmp_path / f"{family}.pt", _payload(family)))
        assert not model.training


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p.pop("family"), "lacks family"),
        (lambda p: p.update(family=3), "family is a int"),
        (lambda p: p.update(family="gan"), "unknown model family 'gan'"),
        (lambda p: p["model_config"].update(depth=10**6), r"depth = 1000000 is outside 1..512"),
        (lambda p: p["model_config"].update(hidden="wide"), "hidden = 'wide' is not a"),
        (lambda p: p["model_config"].update(levels=True), "levels = True is not a"),
        (lambda p: p["model_config"].update(hidden=8), r"weight .* needs torch.float32 \(8"),
        (lambda p: p["model"].pop(next(iter(p["model"]))), "do not fit its glow config"),
        (lambda p: p["model"].update(extra=torch.zeros(1)), "1 unexpected"),
        (lambda p: p["data"].update(shape="abc"), "data must hold a spec and a shape"),
        (
            lambda p: next(v for v in p["model"].values() if v.is_floating_point()).fill_(
                float("nan")
            ),
            "holds NaN or inf",
        ),
    ],
)
def test_broken_payloads_are_one_line(tmp_path, change, match) -> None:
    payload = _payload()
    change(payload)
    path = save_checkpoint(tmp_path / "c.pt", payload)
    started = time.perf_counter()
    with pytest.raises(UserError, match=match) as err:
        _load(path)
    assert time.perf_counter() - started < 5  # refused before building 10**6 steps
    _one_line(err)


def test_hostile_hidden_is_refused_before_allocating(tmp_path) -> None:
    """hidden = 16384 is in range, but the weights stored are 4 channels wide:
    the meta-device build finds the mismatch without allocating 16384^2 convs."""
    payload = _payload()
    payload["model_config"].update(hidden=16384, depth=8)
    path = save_checkpoint(tmp_path / "c.pt", payload)
    with pytest.raises(UserError, match=r"do not fit|needs"):
        _load(path)


@FUZZ
@given(data=st.data())
def test_checkpoint_bytes(tmp_path_factory, data) -> None:
    folder = tmp_path_factory.mktemp("ckpt")
    good = save_checkpoint(folder / "good.pt", _payload()).read_bytes()
    path = folder / "c.pt"
    path.write_bytes(data.draw(mutated(good)))
    try:
        _load(path)
    except UserError as err:
        assert "\n" not in str(err)


CONFIG_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(),
    st.text(max_size=6),
    st.lists(st.integers(-3, 50), max_size=4),
)


@FUZZ
@given(data=st.data(), family=st.sampled_from(["glow", "vae"]))
def test_checkpoint_config_values(tmp_path_factory, data, family) -> None:
    payload = _payload(family)
    key = data.draw(st.sampled_from(sorted(payload["model_config"])))
    payload["model_config"][key] = data.draw(CONFIG_VALUES)
    path = save_checkpoint(tmp_path_factory.mktemp("cfg") / "c.pt", payload)
    try:
        model = _load(path)
    except UserError as err:
        assert "\n" not in str(err)
    else:
        assert sum(p.numel() for p in model.parameters()) < 10**6
