"""genrun: engines in ONNX Runtime, seeded sampling, scoring against gentrain's
figures, the CLI and its errors, and that none of it needs PyTorch.

The engines are conftest's, built once per session from tiny checkpoints
trained for 4 steps."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import weakref

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import InProcessCli
from PIL import Image

import genrun
from genrun.cli import main
from genrun.engine import available_providers, load
from genrun.errors import UserError
from genrun.flops import count_flops
from genrun.images import write_npz_stream
from genrun.sampler import Sampler
from genrun.scorer import Scorer
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint

CLI = InProcessCli(main, "genrun")
genrun_cli = CLI.run
assert_one_line_error = CLI.assert_one_line_error


@pytest.mark.parametrize("family", ["glow", "vae"])
def test_sampling_is_reproducible_and_independent_of_batch_size(
    family, glow_exported, vae_exported
) -> None:
    engine = load(glow_exported["generate"] if family == "glow" else vae_exported["decode"])
    sampler = Sampler(engine)
    reference = sampler.sample(300, temperature=0.8, seed=3)
    assert reference.shape == (300, 1, 8, 8) and reference.dtype == np.uint8
    assert (sampler.sample(300, temperature=0.8, seed=3, batch_size=7) == reference).all()
    assert (sampler.sample(40, temperature=0.8, seed=3, batch_size=13) == reference[:40]).all()
    assert not (sampler.sample(300, temperature=0.8, seed=4) == reference).all()
    sizes = [len(batch) for batch in sampler.batches(300, 0.8, 3, batch_size=128)]
    assert sizes == [128, 128, 44]


def test_zero_temperature_gives_the_mode(glow_exported) -> None:
    samples = Sampler(load(glow_exported["generate"])).sample(5, temperature=0, seed=1)
    assert (samples == samples[0]).all()


def test_fixing_every_level_repeats_the_first_sample(glow_exported, vae_exported) -> None:
    for path, levels in ((glow_exported["generate"], 2), (vae_exported["decode"], 1)):
        sampler = Sampler(load(path))
        first = sampler.sample(1, temperature=0.9, seed=6)
        fixed = sampler.sample(9, temperature=0.9, seed=6, batch_size=4, fixed_levels=levels)
        assert (fixed == first).all()
        with pytest.raises(UserError, match=f"from 0 to {levels}"):
            sampler.sample(2, fixed_levels=levels + 1)


def test_glow_bits_per_dim_equal_gentrain_bpd_density_at_centers(
    glow_exported, glow_checkpoint, digits
) -> None:
    model = model_from_checkpoint(load_checkpoint(glow_checkpoint))
    images = digits.test.images[:37]
    scorer = Scorer(load(glow_exported["density"]))
    bpd = scorer.bits_per_dim_density_at_centers(images, batch_size=16)
    expected = model.evaluate(torch.from_numpy(images))["bpd_density_at_centers"].numpy()
    assert bpd.shape == (37,) and np.abs(bpd - expected).max() <= 1e-4


def test_vae_nll_is_seeded_batch_independent_and_tighter_with_more_draws(
    vae_exported, digits
) -> None:
    scorer = Scorer(load(vae_exported["elbo"]))
    images = digits.test.images[:30]
    nll = scorer.nll(images, iw_samples=20, seed=1)
    assert np.allclose(nll, scorer.nll(images, iw_samples=20, seed=1, batch_size=7))
    assert not np.allclose(nll, scorer.nll(images, iw_samples=20, seed=2))
    # One draw is the ELBO; the importance-weighted bound is tighter on average.
    assert scorer.nll(images, iw_samples=1).mean() > scorer.nll(images, iw_samples=200).mean()
    assert np.allclose(scorer.bits_per_dim(images, iw_samples=20, seed=1), nll / (64 * np.log(2)))


def test_engine_exposes_manifest_and_provider(glow_exported) -> None:
    engine = genrun.load(glow_exported["density"])
    assert engine.provider == available_providers()[0] and "cpu" in available_providers()
    assert (engine.family, engine.role) == ("glow", "density")
    assert engine.manifest.data_shape == [1, 8, 8]
    outputs = engine.run(images=np.zeros((3, 1, 8, 8), np.uint8))
    assert outputs["bits_per_dim"].shape == (3,) and outputs["latent_0"].shape == (3, 2, 4, 4)


def test_bad_engines_and_inputs_are_one_line_user_errors(glow_exported, tmp_path) -> None:
    def error(call) -> str:
        with pytest.raises(UserError) as caught:
            call()
        assert "\n" not in str(caught.value)
        return str(caught.value)

    assert "does not exist" in error(lambda: load(tmp_path / "none.onnx"))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(glow_exported["density"].read_bytes()[:2000])
    assert "not a loadable ONNX model" in error(lambda: load(truncated))
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    assert "not a loadable ONNX model" in error(lambda: load(text))
    bare = onnx.load(str(glow_exported["density"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    bare_engine = load(tmp_path / "bare.onnx")  # foreign graphs load, but cannot score
    assert bare_engine.manifest is None and [s.name for s in bare_engine.inputs] == ["images"]
    assert "holds no vaeflow manifest" in error(lambda: Scorer(bare_engine))
    assert "unknown provider" in error(lambda: load(glow_exported["density"], provider="tpu"))
    if "cuda" not in available_providers():
        assert "not in this onnxruntime build" in error(
            lambda: load(glow_exported["density"], "cuda")
        )

    engine = load(glow_exported["density"])
    wrong = error(lambda: engine.run(images=np.zeros((2, 3, 8, 8), np.uint8)))
    assert "(2, 3, 8, 8)" in wrong and "(N, 1, 8, 8)" in wrong
    assert "(N, 1, 8, 8)" in error(lambda: engine.run(images=np.zeros((2, 8, 8), np.uint8)))
    assert "must be uint8" in error(lambda: engine.run(images=np.zeros((2, 1, 8, 8))))
    assert "needs input 'images'" in error(lambda: engine.run())
    assert "has no input" in error(lambda: engine.run(images=None, pictures=1))
    assert "scoring needs" in error(lambda: Scorer(load(glow_exported["generate"])))
    assert "sampling needs" in error(lambda: Sampler(engine))


def test_cli_sample_writes_png_npz_and_a_folder(glow_exported, tmp_path) -> None:
    code, stdout, err = genrun_cli(
        "sample", "--engine", glow_exported["generate"], "--n", 10, "--out", tmp_path / "grid.png"
    )
    assert code == 0, err
    assert "10 samples" in stdout
    assert Image.open(tmp_path / "grid.png").size == (42, 32)  # 4 x 3 tiles of 8, padding 2
    code, _, err = genrun_cli(
        "sample", "--engine", glow_exported["generate"], "--n", 30, "--batch", 7, "--seed", 5,
        "--out", tmp_path / "s.npz",
    )  # fmt: skip
    assert code == 0, err
    expected = Sampler(load(glow_exported["generate"])).sample(30, seed=5)
    assert (np.load(tmp_path / "s.npz")["images"] == expected).all()
    code, _, err = genrun_cli(
        "sample",
        "--engine",
        glow_exported["generate"],
        "--n",
        12,
        "--seed",
        5,
        "--out",
        tmp_path / "each",
    )
    assert code == 0, err
    files = sorted((tmp_path / "each").iterdir())
    assert len(files) == 12 and (np.asarray(Image.open(files[3])) == expected[3, 0]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["each", "grid.png", "s.npz"]


def test_npz_is_streamed_one_batch_at_a_time(glow_exported, tmp_path) -> None:
    sampler = Sampler(load(glow_exported["generate"]))
    alive: list[weakref.ref] = []
    most_alive = 0  # earlier batches still referenced when the next one is made

    def batches():
        nonlocal most_alive
        for batch in sampler.batches(1000, seed=2, batch_size=64):
            most_alive = max(most_alive, sum(ref() is not None for ref in alive))
            alive.append(weakref.ref(batch))
            yield batch

    write_npz_stream(tmp_path / "s.npz", "images", batches(), (1000, 1, 8, 8))
    assert len(alive) == 16 and most_alive <= 1  # the writer's loop variable, no more
    expected = sampler.sample(1000, seed=2)
    with np.load(tmp_path / "s.npz") as loaded:
        assert loaded.files == ["images"] and (loaded["images"] == expected).all()

    def interrupted():
        yield from sampler.batches(100, batch_size=16)
        raise KeyboardInterrupt  # Ctrl-C before the last rows

    with pytest.raises(KeyboardInterrupt):
        write_npz_stream(tmp_path / "cut.npz", "images", interrupted(), (200, 1, 8, 8))
    with pytest.raises(UserError, match="got 100 rows for an array of 200"):
        write_npz_stream(tmp_path / "cut.npz", "images", sampler.batches(100), (200, 1, 8, 8))
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]


def test_cli_likelihood_writes_per_image_scores_and_the_mean(
    glow_exported, vae_exported, digits, tmp_path
) -> None:
    out = tmp_path / "scores.csv"
    code, stdout, err = genrun_cli(
        "likelihood", "--engine", glow_exported["density"], "--data", "digits", "--out", out
    )
    assert code == 0, err
    rows = out.read_text().splitlines()
    expected = Scorer(load(glow_exported["density"])).bits_per_dim(digits.test.images)
    assert rows[0] == "split,index,nll" and len(rows) == 1 + len(expected)
    assert f"mean {expected.mean():.4f}" in stdout
    code, stdout, err = genrun_cli(
        "likelihood",
        "--engine",
        vae_exported["elbo"],
        "--data",
        "digits",
        "--split",
        "all",
        "--iw-samples",
        4,
    )
    assert code == 0, err
    assert "1797 images" in stdout


def test_cli_bench_prints_a_row_per_batch_size(vae_exported) -> None:
    code, stdout, err = genrun_cli(
        "bench", "--engine", vae_exported["elbo"], "--batch", "1,4", "--seconds", 0.05
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == f"vae elbo (fp32) on cpu, {load(vae_exported['elbo']).threads} threads"
    flops = count_flops(vae_exported["elbo"])
    assert f"{flops / 1e6:.4g} MFLOP per sample" in lines[1] and "matmul peak" in lines[1]
    peak = float(lines[1].split("matmul peak ")[1].split()[0])
    assert "p99 ms" in lines[2] and lines[2].split()[-2:] == ["%", "peak"]
    rows = [line.split() for line in lines[3:]]
    assert [row[0] for row in rows] == ["1", "4"]
    for row in rows:  # GFLOP/s = FLOPs x samples/s; % peak = its share of the matmul peak
        samples_per_s, gflops, share = float(row[2]), float(row[6]), float(row[7])
        assert samples_per_s > 0
        assert gflops == pytest.approx(flops * samples_per_s / 1e9, rel=0.01, abs=0.006)
        assert share == pytest.approx(100 * gflops / peak, rel=0.02, abs=0.1)
    bad = genrun_cli("bench", "--engine", vae_exported["elbo"], "--batch", "0")
    assert_one_line_error(bad, "batch sizes must be")
    assert_one_line_error(
        genrun_cli("bench", "--engine", vae_exported["elbo"], "--batch", "x"), "--batch"
    )
    assert_one_line_error(
        genrun_cli("bench", "--engine", vae_exported["elbo"], "--seconds", 0), "seconds"
    )


def test_cli_info(glow_exported) -> None:
    code, stdout, err = genrun_cli("info", "--engine", glow_exported["generate"])
    assert code == 0, err
    assert "glow generate" in stdout and "noise_0" in stdout and "provider   cpu" in stdout


def test_cli_errors_are_one_line_and_leave_no_file(glow_exported, tmp_path) -> None:
    engine = glow_exported["generate"]
    assert_one_line_error(genrun_cli("sample", "--engine", engine, "--n", 0), "n must be")
    assert_one_line_error(
        genrun_cli("sample", "--engine", engine, "--temperature", -1), "temperature"
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = genrun_cli("sample", "--engine", engine, "--out", blocker / "s.png")
    assert_one_line_error(result, "cannot create")
    assert_one_line_error(
        genrun_cli("sample", "--engine", engine, "--out", tmp_path / "s.jpg"), ".png"
    )
    result = genrun_cli("sample", "--engine", engine, "--n", 10**6, "--out", tmp_path / "g.png")
    assert_one_line_error(result, "too many for a PNG grid")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    result = genrun_cli("sample", "--engine", engine, "--out", tmp_path / "full")
    assert_one_line_error(result, "not an empty folder")
    assert_one_line_error(
        genrun_cli("sample", "--engine", tmp_path / "none.onnx"), "does not exist"
    )
    result = genrun_cli("likelihood", "--engine", engine, "--data", "digits")
    assert_one_line_error(result, "scoring needs")
    result = genrun_cli(
        "likelihood", "--engine", glow_exported["density"], "--data", "digits", "--split", "x"
    )
    assert_one_line_error(result, "--split")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "full"]


def test_genrun_imports_and_runs_with_torch_blocked(glow_exported, tmp_path) -> None:
    """genrun never imports torch, gentrain or genexport: block them and sample."""
    script = textwrap.dedent(
        """
        import sys
        for name in ("torch", "gentrain", "genexport", "onnx"):
            sys.modules[name] = None  # any import of them raises ImportError
        import genrun, genrun.engine, genrun.sampler, genrun.cli
        samples = genrun.Sampler(genrun.load(sys.argv[1])).sample(3, seed=0)
        print(samples.shape)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(glow_exported["generate"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 1, 8, 8)"


def test_pipelined_batches_stop_cleanly(glow_exported) -> None:
    sampler = Sampler(load(glow_exported["generate"]))
    batches = sampler.batches(100, seed=5, batch_size=10)
    first = next(batches)
    batches.close()  # the worker's batch in flight is finished, nothing queued
    assert (first == sampler.sample(10, seed=5)).all()
