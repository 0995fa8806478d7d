"""The Scorer's figures are what they say: the bound on -log P(x) of a discrete
image is the model's dequantised bound at the Scorer's own offsets, never
negative; scores stay finite on noise and constant images; complexity and
typicality are the published formulas; AUROC and FPR95 match a hand count;
the training statistics travel in the manifest; memory stays within --batch
rows whatever K; non-finite scores are counted, never averaged."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper
from PIL import Image
from test_genrun_graphs import _save, _value

from genrun.cli import main
from genrun.engine import load
from genrun.errors import UserError
from genrun.manifest import MANIFEST_VERSION, TrainingScores
from genrun.manifest_io import from_json, read_from_onnx, to_json
from genrun.ood import auroc, compressed_bits, fpr_at_95_tpr, typicality
from genrun.sampler import BlockNoise
from genrun.scorer import Scorer
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.models.quantization import dequantize

CLI = InProcessCli(main, "genrun")


@pytest.fixture(scope="module")
def flow(glow_checkpoint, glow_exported) -> dict:
    """conftest's tiny Glow: its density engine, its model and a Scorer of the engine."""
    path = glow_exported["density"]
    model = model_from_checkpoint(load_checkpoint(glow_checkpoint)).eval()
    return {"path": path, "model": model, "scorer": Scorer(load(path))}


@pytest.fixture(scope="module")
def vae_elbo(vae_exported) -> Path:
    return vae_exported["elbo"]


def _strange_images(shape: tuple[int, ...]) -> np.ndarray:
    """Black, white, grey and uniform-noise images of `shape`."""
    noise = np.random.default_rng(0).integers(0, 256, (4, *shape), dtype=np.uint8)
    constant = [np.full((1, *shape), v, np.uint8) for v in (0, 255, 128)]
    return np.concatenate([*constant, noise])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(images=arrays(np.uint8, (3, 1, 8, 8)), seed=st.integers(0, 2**31))
def test_the_bound_is_the_models_dequantised_bound_and_never_negative(flow, images, seed) -> None:
    scorer, model = flow["scorer"], flow["model"]
    nll = scorer.nll(images, iw_samples=1, seed=seed)
    offsets = BlockNoise(seed, [(1, 8, 8)], uniform=True).take(0, len(images))[0]
    with torch.no_grad():
        y = dequantize(torch.from_numpy(images), model.config.n_bits, torch.from_numpy(offsets))
        log_p = model.log_prob(y).double().numpy()
    expected = 64 * model.config.n_bits * math.log(2) - log_p  # -log(p(y) 2^(-n_bits D))
    assert (nll >= 0).all()
    assert np.allclose(nll, np.maximum(expected, 0), rtol=0, atol=2e-3)


def test_the_importance_weighted_bound_is_positive_and_tightens(flow, digits) -> None:
    """Unfloored: -log P(x) >= 0 holds for the estimate itself on data, noise
    and constant images, and more offsets give a tighter (lower) bound."""
    scorer = flow["scorer"]
    images = np.concatenate([digits.test.images[:20], _strange_images((1, 8, 8))])
    one = scorer._raw_nll(images, 1, 0, 256)
    many = scorer._raw_nll(images, 32, 0, 256)
    assert (many > 0).all() and (one > 0).all()
    assert many.mean() < one.mean()
    centres = scorer.bits_per_dim_density_at_centers(images)
    assert centres.shape == (len(images),)  # a density, free to be below the bound


def test_draws_and_calls_stay_within_the_batch_whatever_k(vae_elbo, digits) -> None:
    scorer = Scorer(load(vae_elbo))
    rows = []
    run = scorer.engine.run
    scorer.engine.run = lambda **feeds: rows.append(len(feeds["images"])) or run(**feeds)
    images = digits.test.images[:2]
    nll = scorer.nll(images, iw_samples=3000, seed=1, batch_size=7)
    assert max(rows) <= 7 and sum(rows) == 6000
    scorer.engine.run = run
    assert np.allclose(nll, scorer.nll(images, iw_samples=3000, seed=1, batch_size=1000), atol=1e-9)


@pytest.mark.parametrize("which", ["flow", "vae"])
def test_scores_are_finite_on_noise_and_constant_images(which, flow, vae_elbo) -> None:
    scorer = flow["scorer"] if which == "flow" else Scorer(load(vae_elbo))
    images = _strange_images((1, 8, 8))
    for score in ("nll", "complexity", "typicality"):
        result = scorer.score(images, score)
        assert result.nonfinite == 0 and np.isfinite(result.values).all(), score
    assert (scorer.score(images, "nll").values > 0).all()


def test_complexity_is_bits_per_dim_minus_png_bits_per_pixel(flow, digits) -> None:
    scorer = flow["scorer"]
    images = digits.test.images[:5]
    levels = images >> (8 - scorer.engine.manifest.pixels.n_bits)
    png_bits = []
    for image in levels:
        buffer = io.BytesIO()
        Image.fromarray(image[0]).save(buffer, format="PNG", compress_level=9, optimize=True)
        png_bits.append(8 * len(buffer.getvalue()))
    assert np.array_equal(compressed_bits(images, scorer.engine.manifest.pixels.n_bits), png_bits)
    expected = scorer.bits_per_dim(images) - np.array(png_bits) / 64
    assert np.allclose(scorer.score(images, "complexity").values, expected, rtol=0, atol=1e-12)


def test_typicality_statistics_travel_in_the_manifest(flow, digits) -> None:
    manifest = read_from_onnx(flow["path"])
    stats = manifest.training_scores
    assert manifest.version == MANIFEST_VERSION and (stats.data, stats.split, stats.iw_samples) == (
        "digits",
        "train",
        1,
    )
    train = digits.train.images[: stats.images]
    bpd = flow["scorer"].bits_per_dim(train, stats.iw_samples, stats.seed)
    assert stats.bpd_mean == pytest.approx(bpd.mean(), abs=1e-9)
    assert stats.bpd_std == pytest.approx(bpd.std(ddof=1), abs=1e-9)
    assert from_json(to_json(manifest)).training_scores == stats
    # A version 1 manifest (no training statistics) still reads.
    values = json.loads(to_json(manifest))
    del values["training_scores"]
    old = from_json(json.dumps({**values, "version": 1}))
    assert old.version == 1 and old.training_scores is None
    images = digits.test.images[:7]
    values = flow["scorer"].score(images, "typicality", m=3).values
    test_bpd = flow["scorer"].bits_per_dim(images)
    means = [test_bpd[:3].mean(), test_bpd[3:6].mean(), test_bpd[6:].mean()]
    sizes = np.array([3, 3, 1])
    assert np.allclose(
        values, np.abs(np.array(means) - stats.bpd_mean) / (stats.bpd_std / np.sqrt(sizes))
    )
    with pytest.raises(UserError, match="computed with iw_samples = 1"):
        flow["scorer"].score(images, "typicality", iw_samples=5)


def test_auroc_and_fpr95_match_a_hand_count() -> None:
    inside, outside = [1, 2, 3, 4], [2, 5, 0]
    # pairs (out > in) + ties / 2: 2 beats 1, ties 2 -> 1.5; 5 beats all -> 4; 0 -> 0
    assert auroc(inside, outside) == pytest.approx(5.5 / 12)
    assert auroc([0, 0], [1, 1]) == 1.0 and auroc([1, 1], [0, 0]) == 0.0
    assert auroc([3, 3], [3]) == 0.5
    # 95% of 20 in-distribution scores 0..19 -> threshold 18; OOD at or below it accepted.
    assert fpr_at_95_tpr(np.arange(20), [18, 19, 30, 5]) == 0.5
    with pytest.raises(UserError, match="NaN"):
        auroc([1.0, np.nan], [2.0])


def test_typicality_formula() -> None:
    values = typicality(np.array([1.0, 3.0, 2.0]), mean=2.0, std=0.5, m=2)
    assert np.allclose(values, [0.0, 0.0])  # group means 2 and 2
    assert np.allclose(typicality(np.array([1.0, 4.0]), 2.0, 0.5), [2.0, 4.0])


def _overflowing_density(path: Path, stats: TrainingScores | None = None) -> Path:
    """log_likelihood = 1000 log(mean pixel / 255): -inf for black images."""
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "scale"], ["scaled"]),
        helper.make_node("Log", ["scaled"], ["log"]),
        helper.make_node("Mul", ["log", "thousand"], ["log_likelihood"]),
    ]
    constants = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 255]),
        helper.make_tensor("thousand", TensorProto.FLOAT, [], [1000.0]),
    ]
    manifest = dict(family="realnvp", role="density", data_shape=[1, 8, 8], latent_shapes=[])
    inputs = [_value("images", TensorProto.UINT8, ["N", 1, 8, 8])]
    outputs = [_value("log_likelihood", TensorProto.FLOAT, ["N"])]
    return _save(path, nodes, inputs, outputs, constants, manifest)


def test_cli_counts_nonfinite_scores_and_never_averages_them(tmp_path) -> None:
    engine = _overflowing_density(tmp_path / "d.onnx")
    files = []
    for i, value in enumerate([0, 255, 128]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8), value, np.uint8)).save(files[-1])
    out = tmp_path / "s.csv"
    result = CLI.run("likelihood", "--engine", engine, *files, "--out", out)
    CLI.assert_one_line_error(result, "1 of 3 nll scores are not finite")
    assert not out.exists()
    code, stdout, err = CLI.run(
        "likelihood", "--engine", engine, *files, "--out", out, "--nonfinite", "keep"
    )
    assert code == 0, err
    assert "1 non-finite kept in the CSV, left out of the mean" in stdout
    rows = out.read_text().splitlines()
    assert rows[0] == "file,nll" and rows[1].endswith(",inf") and len(rows) == 4
    mean = np.mean([-1000 * math.log(v / 255) / (64 * math.log(2)) for v in (255, 128)])
    assert f"mean {mean:.4f}" in stdout
    code, stdout, err = CLI.run(
        "likelihood", "--engine", engine, *files, "--out", out, "--nonfinite", "drop"
    )
    assert code == 0 and "1 non-finite dropped" in stdout
    assert len(out.read_text().splitlines()) == 3
    result = CLI.run("likelihood", "--engine", engine, *files, "--nonfinite", "hide")
    CLI.assert_one_line_error(result, "unknown --nonfinite 'hide'")
    result = CLI.run("likelihood", "--engine", engine, *files, "--score", "typicality")
    CLI.assert_one_line_error(result, "carries no training statistics")


def test_cli_scores_name_their_column(flow, digits, tmp_path) -> None:
    out = tmp_path / "c.csv"
    for score, m in (("complexity", 1), ("typicality", 1), ("bpd_density_at_centers", 1)):
        args = ("likelihood", "--engine", flow["path"], "--data", "digits", "--score", score)
        code, stdout, err = CLI.run(*args, "--m", m, "--out", out)
        assert code == 0, err
        rows = out.read_text().splitlines()
        assert rows[0] == f"split,index,{score}" and len(rows) == 1 + len(digits.test.images)
    code, stdout, err = CLI.run(*args[:-1], "typicality", "--m", 10, "--out", out)
    assert code == 0, err
    rows = out.read_text().splitlines()
    assert rows[0] == "split,first_index,images,typicality" and len(rows) == 1 + 18
    assert rows[-1].startswith("test,170,10,") and "18 groups of 10 images" in stdout
    code, stdout, err = CLI.run("likelihood", "--engine", flow["path"], "--data", "digits")
    assert "dequantised variational bound, seed 0" in stdout
