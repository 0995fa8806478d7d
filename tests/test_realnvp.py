"""RealNVP: masks, every layer and the whole flow invert with exact log-dets,
batch norm's train/eval statistics, learning on real MNIST, and a trained
checkpoint from `gentrain fit realnvp` through export to genrun."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from flow_helpers import assert_invertible

from genrun.errors import UserError
from gentrain.cli import main as gentrain_main
from gentrain.models import RealNVP, RealNVPConfig
from gentrain.models.realnvp.layers import (
    BatchNorm,
    MaskedAffineCoupling,
    channel_mask,
    checkerboard_mask,
)

GENTRAIN = InProcessCli(gentrain_main, "gentrain")


def _perturb(module: torch.nn.Module, scale: float = 0.02, seed: int = 1) -> None:
    """Move every parameter off its identity-like init (the couplings' last
    convolutions start at zero) so the tests see a non-trivial map."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def _jacobian_logdet(fn, x: torch.Tensor) -> float:
    """log|det| of the full Jacobian of fn at one image, in float64."""
    jacobian = torch.autograd.functional.jacobian(fn, x)
    return torch.linalg.slogdet(jacobian.reshape(x.numel(), x.numel()))[1].item()


def test_masks_are_checkerboards_and_channel_halves_and_complementary() -> None:
    board = checkerboard_mask(3, 4, 0)[0, 0]
    assert board.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]
    assert torch.equal(checkerboard_mask(3, 4, 1), 1 - checkerboard_mask(3, 4, 0))
    assert channel_mask(6, 0).flatten().tolist() == [1, 1, 1, 0, 0, 0]
    assert torch.equal(channel_mask(6, 1), 1 - channel_mask(6, 0))
    # Each coupling's mask keeps exactly half of what it sees fixed.
    assert checkerboard_mask(4, 4, 1).sum() == 8 and channel_mask(4, 1).sum() == 2


def test_coupling_leaves_the_masked_half_and_bounds_its_scale() -> None:
    torch.manual_seed(0)
    mask = checkerboard_mask(4, 4, 0)
    coupling = MaskedAffineCoupling(mask, 2, hidden=8, blocks=1, norm="actnorm")
    coupling(torch.randn(8, 2, 4, 4))  # ActNorm init
    _perturb(coupling, 0.5)
    x = 100 * torch.randn(3, 2, 4, 4)  # far from any data: raw scales saturate
    y, _ = coupling(x)
    assert torch.equal((y * mask), (x * mask))
    _, log_scale = coupling._shift_log_scale(x * mask)
    assert (log_scale.abs() <= coupling.scale.abs() + 1e-6).all()
    assert (log_scale * mask == 0).all()


def _layers():
    yield MaskedAffineCoupling(checkerboard_mask(4, 4, 1), 4, 8, 1, "batchnorm")
    yield MaskedAffineCoupling(channel_mask(4, 0), 4, 8, 1, "actnorm")
    yield MaskedAffineCoupling(channel_mask(4, 1), 4, 8, 0, "batchnorm")
    yield BatchNorm(4)


@pytest.mark.parametrize("layer", list(_layers()), ids=lambda m: type(m).__name__)
def test_layer_inverts_and_logdet_matches_autograd(layer: torch.nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 4)
    layer.train()
    for _ in range(3):  # data-dependent init; running statistics near the data's
        layer(x + torch.randn(x.shape))
    _perturb(layer)
    layer.eval()
    assert_invertible(layer, x, tol=1e-5, logdet_tol=1e-8)


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval() -> None:
    torch.manual_seed(0)
    norm = BatchNorm(3, momentum=0.1).double()
    _perturb(norm, 0.3)
    x = (torch.randn(16, 3, 2, 2) * torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1, 1) + 1).double()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    y, logdet = norm.train()(x)
    # Training: the batch is standardised, then scaled by exp(log_gamma) and shifted by beta.
    standard = (y - norm.beta) * torch.exp(-norm.log_gamma)
    assert torch.allclose(standard.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64))
    assert torch.allclose(
        standard.var(dim=(0, 2, 3), unbiased=False), var.flatten() / (var + norm.eps).flatten()
    )
    # ... and the running averages moved a momentum's step toward the batch's statistics.
    assert torch.allclose(norm.running_mean, 0.1 * mean)
    assert torch.allclose(norm.running_var, 0.9 + 0.1 * var)
    # The training log-det is that of the affine map the batch's statistics
    # define: the eval-mode map with those statistics as running averages.
    norm.running_mean.copy_(mean)
    norm.running_var.copy_(var)
    norm.eval()
    y_eval, logdet_eval = norm(x)
    assert torch.allclose(y_eval, y) and torch.allclose(logdet_eval, logdet)
    expected = _jacobian_logdet(lambda v: norm(v)[0], x[:1])
    assert abs(logdet[0].item() - expected) < 1e-8
    # Eval is per image: an image's output does not depend on its batch.
    assert torch.allclose(norm(x[:1])[0], y_eval[:1])
    norm.train()
    assert not torch.allclose(norm(x[:4])[0], y[:4])  # training is per batch


@pytest.mark.parametrize(
    "shape,scales,norm",
    [((1, 8, 8), 2, "batchnorm"), ((1, 28, 28), 3, "actnorm"), ((3, 8, 8), 3, "batchnorm")],
)
def test_realnvp_round_trip(shape: tuple[int, int, int], scales: int, norm: str) -> None:
    torch.manual_seed(0)
    model = RealNVP(RealNVPConfig(shape, scales=scales, hidden=8, blocks=1, norm=norm))
    model.objective(torch.randint(0, 256, (16, *shape), dtype=torch.uint8))  # init
    _perturb(model)
    model.eval()
    y = torch.rand(5, *shape) - 0.5
    latents, _ = model(y)
    assert [tuple(z.shape[1:]) for z in latents] == model.config.latent_shapes()
    assert sum(math.prod(s) for s in model.config.latent_shapes()) == model.config.num_dims
    assert (model.reverse(latents) - y).abs().max() < 1e-4

    # The paper's layout: 3 checkerboard couplings, squeeze, 3 channel couplings per
    # scale, 4 checkerboard couplings at the last; a normalisation after each coupling.
    def layout(scale: torch.nn.Module) -> list[str]:
        kinds = []
        for m in scale.flow:
            if isinstance(m, MaskedAffineCoupling):
                kinds.append("board" if m.mask.shape[1] == 1 else "channel")
            else:
                kinds.append(type(m).__name__)
        return kinds

    norm_name = "BatchNorm" if norm == "batchnorm" else "ActNorm"
    assert layout(model.levels[0]) == [
        *["board", norm_name] * 3,
        "Squeeze",
        *["channel", norm_name] * 3,
    ]
    assert layout(model.levels[-1]) == ["board", norm_name] * 4


@pytest.mark.parametrize("norm", ["batchnorm", "actnorm"])
def test_realnvp_log_prob_matches_autograd_jacobian(norm: str) -> None:
    """The whole flow's log-density equals the change of variables computed by
    brute force on a 1x4x4 input."""
    torch.manual_seed(0)
    model = RealNVP(RealNVPConfig((1, 4, 4), scales=2, hidden=8, blocks=1, norm=norm))
    model.objective(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8))
    _perturb(model, 0.05)
    model.eval().double()
    y = (torch.rand(1, 1, 4, 4) - 0.5).double()

    def flat_latents(v: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in model(v)[0]], 1)

    eps = flat_latents(y)
    expected = (-0.5 * (eps**2 + math.log(2 * math.pi))).sum() + _jacobian_logdet(flat_latents, y)
    assert abs(model.log_prob(y).item() - expected.item()) < 1e-6


def test_sampling_far_out_stays_finite() -> None:
    """tanh-bounded scales: latents of size 50 still map to finite images."""
    torch.manual_seed(0)
    model = RealNVP(RealNVPConfig((1, 8, 8), hidden=8, blocks=1))
    model.objective(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8))
    _perturb(model, 0.1)
    model.eval()
    images = model.reverse([50 * torch.randn(4, *s) for s in model.config.latent_shapes()])
    assert torch.isfinite(images).all()
    assert model.sample(4).dtype == torch.uint8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"data_shape": (1, 8, 8), "scales": 4}, "--scales 3 or --size 16"),
        ({"data_shape": (1, 28, 28), "scales": 4}, "--scales 3 or --size 32"),
        ({"data_shape": (1, 8, 8), "norm": "layernorm"}, "unknown norm"),
        ({"data_shape": (1, 8, 8), "n_bits": 9}, "n-bits"),
    ],
)
def test_bad_configs_are_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        RealNVPConfig(**kwargs)


def test_cli_refuses_bad_options_in_one_line(tmp_path) -> None:
    run = GENTRAIN.run
    GENTRAIN.assert_one_line_error(
        run("fit", "realnvp", "--scales", "4", "--out", tmp_path), "--scales 3 or --size 16"
    )
    GENTRAIN.assert_one_line_error(
        run("fit", "realnvp", "--norm", "layernorm", "--out", tmp_path), "unknown norm"
    )
    assert not list(tmp_path.iterdir())


def test_loss_decreases_on_real_mnist(mnist) -> None:
    """15 Adam steps lower the held-out bits/dim (same dequantisation noise) on
    the central 16x16 of real MNIST digits (cropped to keep the test fast)."""
    crop = (slice(None), slice(None), slice(6, 22), slice(6, 22))
    images = torch.from_numpy(mnist.train.images[:240][crop].copy())
    held_out = torch.from_numpy(mnist.test.images[:64][crop].copy())
    torch.manual_seed(0)
    model = RealNVP(RealNVPConfig((1, 16, 16), scales=2, hidden=8, blocks=0, n_bits=5))
    model.objective(images[:64])  # data-dependent init, as the Trainer does
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def held_out_bpd() -> float:
        torch.manual_seed(1)
        with torch.no_grad():
            return model.objective(held_out).loss.item()

    before = held_out_bpd()
    for step in range(15):
        optimizer.zero_grad()
        model.objective(images[step * 16 : (step + 1) * 16]).loss.backward()
        optimizer.step()
    after = held_out_bpd()
    assert after < before - 0.5, (before, after)


# -- gentrain fit -> eval -> genexport -> genrun ------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny RealNVP with batch norm (the interesting case to export) trained 10
    steps by `gentrain fit realnvp` on the digits, and `gentrain eval`'s metrics."""
    out = tmp_path_factory.mktemp("realnvp")
    tiny = ("--hidden", "8", "--blocks", "0", "--norm", "batchnorm", "--steps", "10")
    code, _, err = GENTRAIN.run("fit", "realnvp", *tiny, "--device", "cpu", "--out", out)
    assert code == 0, err
    code, _, err = GENTRAIN.run("eval", out / "checkpoint.pt", "--json", out / "eval.json")
    assert code == 0, err
    return out / "checkpoint.pt", json.loads((out / "eval.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def engines(trained, tmp_path_factory) -> dict[str, Path]:
    from genexport.export import export_checkpoint

    out = tmp_path_factory.mktemp("realnvp-engines")
    return {engine.graph.role: engine.path for engine in export_checkpoint(trained[0], out)}


@pytest.mark.slow  # the trained RealNVP and its engines: 22 s on 2 loaded cores
def test_engines_pass_parity_with_glow_shaped_manifests(trained, engines) -> None:
    from genrun.manifest_io import read_from_onnx
    from gentrain.checkpoint import load_checkpoint

    config = RealNVPConfig.from_dict(load_checkpoint(trained[0])["model_config"])
    assert config.norm == "batchnorm" and config.n_bits == 5  # the digits' depth by default
    shapes = [list(s) for s in config.latent_shapes()]
    generate, density = (read_from_onnx(engines[role]) for role in ("generate", "density"))
    for manifest in (generate, density):
        assert manifest.family == "realnvp" and manifest.latent_shapes == shapes
        (check,) = manifest.parity
        assert check.batch_sizes == [1, 7, 64] and not check.failures()
        assert check.max_abs_error["round_trip.images"] <= 1e-4
    assert [s.name for s in generate.inputs] == ["noise_0", "noise_1", "temperature"]
    assert [s.name for s in generate.outputs] == ["images", "pixels"]
    assert [s.name for s in density.inputs] == ["images", "offset"]
    assert density.input("offset").default == 0.5
    assert [s.name for s in density.outputs] == [
        "bits_per_dim",
        "log_likelihood",
        "latent_0",
        "latent_1",
    ]
    assert density.parity[0].max_abs_error["bits_per_dim"] <= 1e-4


@pytest.mark.slow  # the trained RealNVP and its engines: 22 s on 2 loaded cores
def test_genrun_samples_and_scores_like_gentrain_eval(trained, engines) -> None:
    import genrun
    from genrun.readers import load_data
    from gentrain.checkpoint import load_checkpoint, model_from_checkpoint

    checkpoint, metrics = trained
    images = load_data("digits").test.images
    scorer = genrun.Scorer(genrun.load(engines["density"], provider="cpu"))
    bpd = scorer.bits_per_dim_density_at_centers(images, batch_size=64)
    assert abs(bpd.mean() - metrics["bpd_density_at_centers"]["mean"]) <= 1e-4
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    expected = model.evaluate(torch.from_numpy(images))["bpd_density_at_centers"].double().numpy()
    assert np.abs(bpd - expected).max() <= 1e-4
    sampler = genrun.Sampler(genrun.load(engines["generate"], provider="cpu"))
    samples = sampler.sample(10, temperature=0.7, seed=3, batch_size=4)
    assert samples.shape == (10, 1, 8, 8) and samples.dtype == np.uint8
    assert np.array_equal(samples[:5], sampler.sample(5, temperature=0.7, seed=3, batch_size=5))
