"""Conditional engines (genexport onnx --marginal of a --conditional Glow):
parity for every class, the manifest's classes, label-seeded samples equal at
every batch size, the marginal density equal to the logsumexp of the per-class
ones and to PyTorch, classify agreeing with gentrain eval's classifier, and
the CLI's label options and their one-line refusals."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from flow_helpers import assert_marginal_matches_pytorch

from genexport.graphs import build_graph
from genrun.cli import main
from genrun.engine import load
from genrun.manifest import CONDITIONAL_VERSION, MANIFEST_VERSION, METADATA_KEY
from genrun.manifest_io import read_from_onnx
from genrun.sampler import Sampler
from genrun.scorer import Scorer
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint

GENRUN = InProcessCli(main, "genrun")


@pytest.fixture(scope="module")
def conditional(conditional_glow_checkpoint, conditional_glow_exported):
    """conftest's tiny conditional Glow and its generate, density (label
    input) and marginal engines: (checkpoint, role -> engine)."""
    return conditional_glow_checkpoint, conditional_glow_exported


def test_every_class_passes_parity_and_the_manifest_lists_the_classes(conditional) -> None:
    checkpoint, engines = conditional
    assert set(engines) == {"generate", "density", "marginal"}
    for path in engines.values():
        manifest = read_from_onnx(path)
        assert manifest.parity and not any(check.failures() for check in manifest.parity)
        assert manifest.version == CONDITIONAL_VERSION and manifest.conditional
        assert [c.index for c in manifest.classes] == list(range(10))
        assert all(c.name is None for c in manifest.classes)  # the digits' labels are indices
        prior = sum(math.exp(c.log_prior) for c in manifest.classes)
        assert prior == pytest.approx(1.0)
    # The batch of 64 of every parity check held each of the 10 classes.
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    generate = build_graph(model, "generate")
    labels = generate.sample_inputs(64, torch.Generator().manual_seed(64))[-1]
    assert set(labels.tolist()) == set(range(10))
    assert "round_trip.images" in read_from_onnx(engines["density"]).parity[-1].max_abs_error
    names = {s.name for s in read_from_onnx(engines["marginal"]).inputs}
    assert names == {"images", "offset"}  # the marginal takes no label


def test_unconditional_manifests_stay_as_they_were_without_classes(glow_exported) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(glow_exported["generate"])).metadata_props}
    values = json.loads(props[METADATA_KEY])
    assert values["version"] == MANIFEST_VERSION
    assert "classes" not in values and "provenance" not in values


def test_a_label_gives_the_same_samples_at_every_batch_size(conditional) -> None:
    _, engines = conditional
    sampler = Sampler(load(engines["generate"], threads=1))
    one = sampler.sample(20, seed=3, batch_size=1, label=4)
    for batch_size in (7, 64):
        assert np.array_equal(sampler.sample(20, seed=3, batch_size=batch_size, label=4), one)
    # The seed fixes the noise, the label the class: per-sample labels pick rows.
    mixed = np.arange(20) % 3
    rows = sampler.sample(20, seed=3, batch_size=7, label=mixed)
    for c in range(3):
        same_class = sampler.sample(20, seed=3, label=c)
        assert np.array_equal(rows[mixed == c], same_class[mixed == c])
    by_class = np.concatenate(list(sampler.batches_by_class(5, [2, 7], seed=3, batch_size=3)))
    assert np.array_equal(by_class[:5], sampler.sample(5, seed=3, label=2))
    assert np.array_equal(by_class[5:], sampler.sample(5, seed=3, label=7))


def test_the_marginal_is_the_logsumexp_of_the_classes_and_matches_pytorch(
    conditional, digits
) -> None:
    checkpoint, engines = conditional
    images, labels = digits.test.images[:40], digits.test.labels[:40]
    marginal, _, reference = assert_marginal_matches_pytorch(
        engines["marginal"], checkpoint, images
    )
    log_prior = np.array([c.log_prior for c in marginal.manifest.classes])

    # log P(x|y): the density engine (label input) and the marginal's column agree.
    density = Scorer(load(engines["density"], threads=1))
    column = Scorer(marginal)
    a = density.bits_per_dim(images, seed=1, labels=labels)
    b = column.bits_per_dim(images, seed=1, labels=labels)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # The generative classifier: the engine's pick is PyTorch's (bin centres).
    picked = column.classify(images).argmax(1)
    assert np.array_equal(picked, (reference + log_prior).argmax(1))
    assert np.array_equal(density.classify(images).argmax(1), picked)


def test_cli_samples_scores_and_classifies_by_class(conditional, tmp_path) -> None:
    _, engines = conditional
    generate, density = engines["generate"], engines["density"]
    marginal = engines["marginal"]
    code, text, err = GENRUN.run(
        "sample", "--engine", generate, "--label", "all", "--n", "4", "--out", tmp_path / "g.npz"
    )
    assert code == 0 and "40 samples, 4 of each of 10 classes" in text, err
    rows = np.load(tmp_path / "g.npz")["images"]
    one = Sampler(load(generate)).sample(4, label=9)
    assert np.array_equal(rows[36:], one)

    code, text, err = GENRUN.run(
        "classify", "--engine", marginal, "--data", "digits", "--out", tmp_path / "c.csv"
    )
    assert code == 0 and "accuracy" in text, err
    with open(tmp_path / "c.csv") as handle:
        table = list(csv.reader(handle))
    assert table[0][:3] == ["split", "index", "class"] and len(table[0]) == 3 + 10
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{row[2]}\n" for row in table[1:]))
    code, text, err = GENRUN.run(
        "likelihood", "--engine", density, "--data", "digits", "--label-from", labels
    )
    assert code == 0 and "180 images" in text, err
    code, _, err = GENRUN.run("likelihood", "--engine", marginal, "--data", "digits", "--marginal")
    assert code == 0, err

    refusals = [
        (("sample", "--engine", generate, "--label", "eleven"), "unknown class 'eleven'"),
        (("likelihood", "--engine", density, "--data", "digits"), "pass --label-from"),
        (("likelihood", "--engine", density, "--data", "digits", "--marginal"), "marginal"),
        (("sample", "--engine", "builtin:nothing"), "no builtin engine 'nothing'"),
    ]
    for args, match in refusals:
        GENRUN.assert_one_line_error(GENRUN.run(*args), match)


def test_engines_without_classes_refuse_labels(glow_exported, tmp_path) -> None:
    generate, density = glow_exported["generate"], glow_exported["density"]
    for args, match in [
        (("sample", "--engine", generate, "--label", "3"), "not conditional"),
        (("classify", "--engine", density, "--data", "digits"), "not a conditional density"),
        (("likelihood", "--engine", density, "--data", "digits", "--marginal"), "not conditional"),
    ]:
        GENRUN.assert_one_line_error(GENRUN.run(*args), match)


def test_tensorrt_plans_take_the_label_too(conditional, digits, tmp_path, monkeypatch) -> None:
    """With tests/fake_gpu.py's TensorRT (the plan runs in ONNX Runtime): the
    label input gets a profile, plan parity feeds every class, and the plans
    sample and classify as their ONNX engines do."""
    import fake_gpu

    from genexport.tensorrt import PlanOptions, export_plans

    _, engines = conditional
    fake_gpu.install(monkeypatch)
    plans = {}
    for graph in ("generate", "marginal"):
        built = export_plans(
            engines[graph], tmp_path, options=PlanOptions(opt_batch=8, max_batch=32)
        )
        plans[graph] = built[0].path
        assert not built[0].parity.failures()
    plan_samples = Sampler(load(plans["generate"])).sample(12, seed=2, label=6, batch_size=5)
    onnx_samples = Sampler(load(engines["generate"])).sample(12, seed=2, label=6)
    assert np.array_equal(plan_samples, onnx_samples)
    images = digits.test.images[:40]
    plan_classes = Scorer(load(plans["marginal"])).classify(images).argmax(1)
    onnx_classes = Scorer(load(engines["marginal"])).classify(images).argmax(1)
    assert np.array_equal(plan_classes, onnx_classes)
