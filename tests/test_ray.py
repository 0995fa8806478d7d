"""`genrun --ray` (genrun/ray_cluster.py): Ray actors give the one-process
results: samples bit for bit, scores to float rounding, in the same order.
One local Ray (2 CPUs, actors with fractional CPUs) shared by the module."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import InProcessCli
from PIL import Image

from genrun import ray_cluster
from genrun.cli import main
from genrun.engine import load
from genrun.sampler import Sampler
from genrun.scorer import Scorer

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.slow  # a local Ray takes seconds to start on 2 cores

cli = InProcessCli(main, "genrun")


def genrun(*args) -> None:
    code, _, err = cli.run(*args)
    assert code == 0, err


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_cluster.start()  # joins the running Ray, sets ordered, quiet execution
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def engines(glow_exported, vae_exported) -> dict[str, Path]:
    """conftest's tiny Glow generate/density and VAE decode/elbo engines, by FAMILY-ROLE."""
    return {
        **{f"glow-{role}": path for role, path in glow_exported.items()},
        **{f"vae-{role}": path for role, path in vae_exported.items()},
    }


@pytest.mark.parametrize(("name", "fixed"), [("glow-generate", 0), ("vae-decode", 0)])
def test_ray_samples_equal_one_process_bit_for_bit(local_ray, engines, name, fixed) -> None:
    options = dict(temperature=0.8, seed=5, batch_size=64, fixed_levels=fixed)
    one = Sampler(load(engines[name], threads=1)).sample(700, **options)  # 3 units of 256
    on_ray = ray_cluster.sample(engines[name], 700, actors=2, **options)
    assert on_ray.dtype == np.uint8 and np.array_equal(on_ray, one)


@pytest.mark.parametrize(("name", "k"), [("glow-density", 1), ("vae-elbo", 8)])
def test_ray_scores_equal_one_process(local_ray, engines, digits, name, k) -> None:
    images = digits.test.images
    one = Scorer(load(engines[name], threads=1)).bits_per_dim(images, k, seed=2, batch_size=64)
    on_ray = ray_cluster.score(engines[name], images, k, seed=2, batch_size=64, actors=2)
    np.testing.assert_allclose(on_ray, one, rtol=1e-6)


def test_cli_ray_writes_what_one_process_writes(local_ray, engines, digits, tmp_path) -> None:
    generate = ["sample", "--engine", str(engines["glow-generate"]), "--n", "300", "--batch", "64"]
    genrun(*generate, "--out", str(tmp_path / "one.npz"))
    genrun(*generate, "--out", str(tmp_path / "ray.npz"), "--ray", "--actors", "2")
    one, on_ray = (np.load(tmp_path / f"{k}.npz")["images"] for k in ("one", "ray"))
    assert np.array_equal(one, on_ray)
    genrun(*generate, "--out", str(tmp_path / "shards.parquet"), "--ray")
    # Read back with pyarrow (Ray Data's own dependency; a Ray Data read is
    # seconds of tasks): imported ray gives the pixels their tensor type.
    import pyarrow.parquet

    table = pyarrow.parquet.read_table(tmp_path / "shards.parquet")
    index = table.column("index").to_numpy()
    order = np.argsort(index)
    assert index[order].tolist() == list(range(300))
    assert np.array_equal(table.column("pixels").combine_chunks().to_numpy()[order], one)

    files = []
    for i, image in enumerate(digits.test.images[:5]):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(image[0]).save(files[-1])
    score = ["likelihood", "--engine", str(engines["glow-density"]), *map(str, files)]
    genrun(*score, "--out", str(tmp_path / "one.csv"))
    genrun(*score, "--out", str(tmp_path / "ray.csv"), "--ray")
    rows = [list(csv.reader((tmp_path / f"{k}.csv").open())) for k in ("one", "ray")]
    assert [r[0] for r in rows[1]] == ["file", *map(str, files)]  # per-path scores, in order
    np.testing.assert_allclose(
        [float(r[1]) for r in rows[1][1:]], [float(r[1]) for r in rows[0][1:]], rtol=1e-6
    )


def test_ray_refuses_bad_input_in_one_line(local_ray, engines, tmp_path) -> None:
    result = cli.run(
        "sample", "--engine", engines["glow-generate"], "--ray", "--actors", "0",
        "--out", tmp_path / "x.npz",
    )  # fmt: skip
    cli.assert_one_line_error(result, "--actors must be a whole number >= 1")
    assert not (tmp_path / "x.npz").exists()
    missing = tmp_path / "missing.png"
    result = cli.run("likelihood", "--engine", engines["glow-density"], missing, "--ray")
    cli.assert_one_line_error(result, f"image file {missing} does not exist")


def test_ray_samples_and_scores_of_a_label_equal_one_process(
    local_ray, conditional_glow_exported, digits, tmp_path
) -> None:
    """A conditional Glow (conftest's): --label gives the same samples on Ray
    as in one process, per-sample labels too; labelled scores equal."""
    generate, density = conditional_glow_exported["generate"], conditional_glow_exported["density"]
    for label in (3, np.arange(300) % 7):
        options = dict(temperature=0.8, seed=5, batch_size=64, label=label)
        one = Sampler(load(generate, threads=1)).sample(300, **options)
        assert np.array_equal(ray_cluster.sample(generate, 300, actors=2, **options), one)
    images, labels = digits.test.images, digits.test.labels
    one = Scorer(load(density, threads=1)).bits_per_dim(images, seed=2, labels=labels)
    on_ray = ray_cluster.score(density, images, seed=2, actors=2, labels=labels)
    np.testing.assert_allclose(on_ray, one, rtol=1e-6)
    genrun(
        "sample", "--engine", str(generate), "--label", "4", "--n", "70", "--ray",
        "--out", str(tmp_path / "ray.npz"),
    )  # fmt: skip
    expected = Sampler(load(generate)).sample(70, label=4)
    assert np.array_equal(np.load(tmp_path / "ray.npz")["images"], expected)
