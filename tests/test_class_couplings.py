"""Glow's class couplings (`--class-couplings`, on by default for a new
--conditional fit) and class ActNorm (`--class-actnorm`, asked for): the
label enters every coupling network and every flow step's ActNorm. The flow stays
invertible with an exact log-det for every label, the per-class densities
are those of one label at a time, configs and checkpoints from before the
option load as the prior-only model they were, and the engines (label input,
marginal over classes) pass parity and match PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flow_helpers import assert_marginal_matches_pytorch

from genrun.engine import load
from genrun.errors import UserError
from genrun.manifest_io import read_from_onnx
from genrun.sampler import Sampler
from gentrain.models import Glow, GlowConfig, build_model, new_model

CLASSES = (3, 4, 5)


def _coupled(shape=(1, 8, 8), hidden: int = 8) -> Glow:
    """A tiny conditional Glow with class couplings, ActNorm initialised and
    every zero-initialised weight (output layers, class biases) drawn, so
    that the label changes every coupling."""
    torch.manual_seed(0)
    config = GlowConfig(
        shape, levels=2, depth=2, hidden=hidden, n_bits=5, conditional=True,
        class_counts=CLASSES, class_couplings=True, class_actnorm=True,
    )  # fmt: skip
    model = Glow(config)
    model.train()
    images = torch.randint(0, 256, (6, *shape), dtype=torch.uint8)
    model.objective(images, torch.arange(6) % 3)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".out." in name or "class_" in name:
                weight.normal_(0, 0.2)
    return model.eval()


def _flat(latents: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([eps.flatten(1) for eps in latents], 1)


def test_each_label_gives_an_invertible_flow_with_an_exact_logdet() -> None:
    model = _coupled((1, 4, 4), hidden=4)
    y = torch.rand(1, 1, 4, 4) - 0.5
    outputs = []
    for c in range(len(CLASSES)):
        label = torch.tensor([c])
        latents, logdet = model(y, label)
        back = model.reverse(latents, 1.0, label)
        assert torch.allclose(back, y, atol=1e-5)
        jacobian = torch.autograd.functional.jacobian(
            lambda v, label=label: _flat(model(v.view(1, 1, 4, 4), label)[0])[0], y.flatten()
        )
        assert logdet.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-3)
        outputs.append(_flat(latents))
    # The couplings see the label: the same image maps to other noise per class.
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-3)


def test_every_class_at_once_is_each_class_alone() -> None:
    model = _coupled()
    y = torch.rand(5, 1, 8, 8) - 0.5
    with torch.no_grad():
        by_class = model.class_log_probs(y)
        alone = torch.stack(
            [model.log_prob(y, torch.full((5,), c)) for c in range(len(CLASSES))], 1
        )
        # A one-hot class weight is that class (the soft labels of interpolation).
        soft = model.log_prob(y, torch.eye(len(CLASSES))[torch.tensor([0, 1, 2, 1, 0])])
    assert torch.allclose(by_class, alone, atol=1e-4)
    assert torch.allclose(soft, by_class[torch.arange(5), torch.tensor([0, 1, 2, 1, 0])], atol=1e-4)
    # The hybrid objective runs through the same per-class densities.
    model.config.class_weight = 0.5
    objective = model.objective(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), 1)
    assert math.isfinite(objective.loss.item()) and "bits_y" in objective.metrics


def test_a_config_without_the_field_loads_as_the_prior_only_model() -> None:
    stored = _coupled().config.to_dict()
    stored.pop("class_couplings")  # as a checkpoint from before the options
    stored.pop("class_actnorm")
    old = build_model("glow", stored)
    assert not old.config.class_couplings and not old.config.class_actnorm
    assert not any("class_" in name for name, _ in old.levels.named_parameters())
    with torch.no_grad():
        y = torch.rand(2, 1, 8, 8) - 0.5
        old.class_log_probs(y)  # one pass through the levels, no label needed there
    with pytest.raises(UserError, match="--conditional"):
        GlowConfig((1, 8, 8), class_couplings=True)
    with pytest.raises(UserError, match="--conditional"):
        GlowConfig((1, 8, 8), class_actnorm=True)


def test_a_new_conditional_fit_couples_unless_told_not_to(digits) -> None:
    on = new_model("glow", {"conditional": True}, digits, 0).config
    assert on.class_couplings and not on.class_actnorm  # class ActNorm is asked for
    off = new_model("glow", {"conditional": True, "class_couplings": False}, digits, 0).config
    assert not off.class_couplings
    both = {"conditional": True, "class_actnorm": True}
    assert new_model("glow", both, digits, 0).config.class_actnorm
    plain = new_model("glow", {}, digits, 0).config
    assert not plain.class_couplings and not plain.class_actnorm


@pytest.fixture(scope="module")
def coupled_engines(digits, tmp_path_factory):
    """A tiny class-coupled Glow trained 4 steps on the digits, exported with
    --marginal: (checkpoint, role -> engine)."""
    from genexport.export import export_checkpoint
    from gentrain.train import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("coupled")
    torch.manual_seed(0)
    config = GlowConfig(
        digits.shape, levels=2, depth=1, hidden=8, conditional=True,
        class_counts=digits.class_counts(), class_couplings=True, class_actnorm=True,
    )  # fmt: skip
    model = Glow(config)
    steps = dict(steps=4, batch_size=32, warmup=1, eval_every=4, ckpt_every=4, log_every=4)
    Trainer(model, digits, TrainConfig(device="cpu", **steps), out).fit()
    checkpoint = out / "checkpoint.pt"
    export_checkpoint(checkpoint, out, name="cc", marginal=True)
    roles = ("generate", "density", "marginal")
    return checkpoint, {role: out / f"cc.{role}.onnx" for role in roles}


def test_coupled_engines_pass_parity_and_match_pytorch(coupled_engines, digits) -> None:
    checkpoint, engines = coupled_engines
    for path in engines.values():
        manifest = read_from_onnx(path)
        assert manifest.parity and not any(check.failures() for check in manifest.parity)
    images = digits.test.images[:30]
    _, by_class, _ = assert_marginal_matches_pytorch(engines["marginal"], checkpoint, images)
    # The density engine's log P(x|y) for a label is the marginal's column.
    density = load(engines["density"], threads=1)
    labels = digits.test.labels[:30].astype(np.int64)
    one = density.run(images=images, label=labels)["log_likelihood"]
    np.testing.assert_allclose(one, by_class[np.arange(30), labels], atol=1e-3)


def test_coupled_samples_follow_the_label_and_the_seed(coupled_engines) -> None:
    _, engines = coupled_engines
    sampler = Sampler(load(engines["generate"], threads=1))
    one = sampler.sample(12, seed=5, batch_size=1, label=3)
    assert np.array_equal(sampler.sample(12, seed=5, batch_size=5, label=3), one)
