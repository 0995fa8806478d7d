"""genrun on tiny hand-made ONNX graphs (no torch, no training): the
manifest-driven rules of Sampler and Scorer for families with several latent
groups (HVAE-like generate and elbo graphs), the autoencoder refusal,
`likelihood` on image files and every --data source, foreign ONNX files
without a manifest, and the FLOP count."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import InProcessCli
from conftest import MNIST_DIR
from onnx import TensorProto, helper
from PIL import Image

from genrun.cli import main
from genrun.engine import load
from genrun.errors import UserError
from genrun.flops import count_flops, matmul_peak_gflops
from genrun.manifest import (
    CheckpointInfo,
    ExportInfo,
    Manifest,
    PixelMapping,
    TensorSpec,
)
from genrun.manifest_io import write_to_onnx
from genrun.readers import TEST_FRACTION, split_indices
from genrun.sampler import BLOCK, Sampler
from genrun.scorer import Scorer

CLI = InProcessCli(main, "genrun")
FLOAT, UINT8 = TensorProto.FLOAT, TensorProto.UINT8
ONNX_TYPES = {FLOAT: "float32", UINT8: "uint8"}


def _value(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] = (),
    manifest: dict | None = None,
) -> Path:
    """Write a graph; with `manifest` (family, role, data_shape, latent_shapes,
    optionally temperature) attach a vaeflow manifest whose tensor specs are
    the graph's own."""
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    if manifest is not None:

        def specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
            return [
                TensorSpec(
                    v.name,
                    ONNX_TYPES[v.type.tensor_type.elem_type],
                    [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                )
                for v in values
            ]

        write_to_onnx(
            model,
            Manifest(
                inputs=specs(inputs),
                outputs=specs(outputs),
                precision="fp32",
                pixels=PixelMapping(8, [0.0, 1.0], "x / 255", "round(255 x)", 10.0),
                checkpoint=CheckpointInfo("c.pt", "00" * 32, 0, {}, {}, {}),
                parity=[],
                export=ExportInfo("hand-made", 18, len(nodes), None, None, {}),
                **{"temperature": None, **manifest},
            ),
        )
    onnx.save(model, str(path))
    return path


def _const(name: str, value: list) -> onnx.TensorProto:
    return helper.make_tensor(name, FLOAT, [len(value)], value)


def _generate_graph(path: Path, family: str, temperature: bool) -> Path:
    """pixels (N, 1, 1, 5) = uint8(clip(128 + 20 * T * concat(noise_0 (N, 2), noise_1 (N, 3))));
    without a temperature input T is the caller's (it scales the noise)."""
    scaled = "scaled" if temperature else "joined"
    nodes = [helper.make_node("Concat", ["noise_0", "noise_1"], ["joined"], axis=1)]
    inputs = [_value("noise_0", FLOAT, ["N", 2]), _value("noise_1", FLOAT, ["N", 3])]
    if temperature:
        inputs.append(_value("temperature", FLOAT, ["N"]))
        nodes += [
            helper.make_node("Unsqueeze", ["temperature", "one"], ["t"]),
            helper.make_node("Mul", ["joined", "t"], ["scaled"]),
        ]
    nodes += [
        helper.make_node("Mul", [scaled, "twenty"], ["spread"]),
        helper.make_node("Add", ["spread", "mid"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "low", "high"], ["clipped"]),
        helper.make_node("Reshape", ["clipped", "shape"], ["images"]),
        helper.make_node("Cast", ["images"], ["pixels"], to=UINT8),
    ]
    constants = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("twenty", FLOAT, [], [20.0]),
        helper.make_tensor("mid", FLOAT, [], [128.0]),
        helper.make_tensor("low", FLOAT, [], [0.0]),
        helper.make_tensor("high", FLOAT, [], [255.0]),
        helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 1, 1, 5]),
    ]
    outputs = [_value("images", FLOAT, ["N", 1, 1, 5]), _value("pixels", UINT8, ["N", 1, 1, 5])]
    role = "decode" if family == "ae" else "generate"
    manifest = dict(family=family, role=role, data_shape=[1, 1, 5], latent_shapes=[[2], [3]])
    # A sampler's manifest says how its temperature acts; an AE has no prior, so none.
    manifest["temperature"] = None if family == "ae" else "scales the noise"
    return _save(path, nodes, inputs, outputs, constants, manifest)


def _elbo_graph(path: Path) -> Path:
    """log_weight = sum(images as float) / 100 - sum(eps_0^2) / 2 - sum(eps_1) :
    two latent groups of different sizes, so swapped feeds would show."""
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=FLOAT),
        helper.make_node("ReduceSum", ["x", "all_but_batch"], ["x_sum"], keepdims=0),
        helper.make_node("Mul", ["eps_0", "eps_0"], ["sq"]),
        helper.make_node("ReduceSum", ["sq", "axis1"], ["sq_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["eps_1", "axis1"], ["e1_sum"], keepdims=0),
        helper.make_node("Mul", ["x_sum", "hundredth"], ["a"]),
        helper.make_node("Mul", ["sq_sum", "half"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["ab"]),
        helper.make_node("Sub", ["ab", "e1_sum"], ["log_weight"]),
    ]
    constants = [
        helper.make_tensor("all_but_batch", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("hundredth", FLOAT, [], [0.01]),
        helper.make_tensor("half", FLOAT, [], [0.5]),
    ]
    inputs = [
        _value("images", UINT8, ["N", 1, 2, 2]),
        _value("eps_0", FLOAT, ["N", 3]),
        _value("eps_1", FLOAT, ["N", 2]),
    ]
    manifest = dict(family="hvae", role="elbo", data_shape=[1, 2, 2], latent_shapes=[[3], [2]])
    return _save(path, nodes, inputs, [_value("log_weight", FLOAT, ["N"])], constants, manifest)


def _expected_pixels(noise: list[np.ndarray], temperature: float) -> np.ndarray:
    joined = np.float32(temperature) * np.concatenate(noise, axis=1)
    return np.clip(128 + 20 * joined, 0, 255).astype(np.uint8).reshape(-1, 1, 1, 5)


@pytest.mark.parametrize("temperature_input", [True, False])
def test_sampler_feeds_every_latent_group_in_manifest_order(tmp_path, temperature_input) -> None:
    engine = load(_generate_graph(tmp_path / "g.onnx", "hvae", temperature_input))
    sampler = Sampler(engine)
    assert sampler.noise_inputs == ["noise_0", "noise_1"]
    samples = sampler.sample(300, temperature=0.5, seed=2, batch_size=64)
    # 300 items span two noise blocks; each block draws level 0, then level 1.
    rng = [np.random.default_rng([2, block]) for block in (0, 1)]
    per_block = [[r.standard_normal((BLOCK, s), dtype=np.float32) for s in (2, 3)] for r in rng]
    noise = [np.concatenate([blk[i] for blk in per_block])[:300] for i in range(2)]
    assert (samples == _expected_pixels(noise, 0.5)).all()


def test_fixed_levels_share_the_first_groups_noise(tmp_path) -> None:
    sampler = Sampler(load(_generate_graph(tmp_path / "g.onnx", "hvae", True)))
    free = sampler.sample(20, temperature=1.0, seed=4, batch_size=8)
    one = sampler.sample(20, temperature=1.0, seed=4, batch_size=8, fixed_levels=1)
    both = sampler.sample(20, temperature=1.0, seed=4, batch_size=8, fixed_levels=2)
    # Level 0 is pixels 0-1, level 1 pixels 2-4; a fixed level is item 0's draw.
    assert (one[:, ..., :2] == free[0, ..., :2]).all() and (one[:, ..., 2:] == free[..., 2:]).all()
    assert (both == free[0]).all()
    assert len(np.unique(free[..., :2].reshape(20, -1), axis=0)) == 20
    with pytest.raises(UserError, match=r"fixed levels must be a whole number from 0 to 2"):
        sampler.sample(3, fixed_levels=3)
    out = tmp_path / "fixed.npz"
    code, _, err = CLI.run(
        "sample", "--engine", sampler.engine.path, "--n", 20, "--temperature", 1, "--seed", 4,
        "--fixed-levels", 1, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert (np.load(out)["images"] == one).all()


def test_autoencoder_decoders_are_refused_for_sampling(tmp_path) -> None:
    engine = load(_generate_graph(tmp_path / "ae.onnx", "ae", False))
    with pytest.raises(UserError, match=r"no prior to sample from.*engine.run\(z=") as caught:
        Sampler(engine)
    assert "\n" not in str(caught.value)


def test_scorer_importance_samples_every_latent_group(tmp_path) -> None:
    scorer = Scorer(load(_elbo_graph(tmp_path / "elbo.onnx")))
    assert scorer.noise_inputs == ["eps_0", "eps_1"] and not scorer.exact
    images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 1, 2, 2) * 10
    k = 7
    nll = scorer.nll(images, iw_samples=k, seed=3, batch_size=10)  # 10 rows per call
    rng = np.random.default_rng([3, 0])  # rows i * k + j, all in block 0
    eps_0 = rng.standard_normal((BLOCK, 3), dtype=np.float32)[: 5 * k].reshape(5, k, 3)
    eps_1 = rng.standard_normal((BLOCK, 2), dtype=np.float32)[: 5 * k].reshape(5, k, 2)
    weights = (
        images.reshape(5, 1, 4).astype(np.float64).sum(-1) / 100
        - (eps_0.astype(np.float64) ** 2).sum(-1) / 2
        - eps_1.astype(np.float64).sum(-1)
    )
    expected = -(np.log(np.exp(weights).mean(axis=1))) + 10.0  # + discretisation nats
    assert np.abs(nll - expected).max() < 1e-4
    assert np.allclose(scorer.nll(images, iw_samples=k, seed=3, batch_size=1000), nll)


def test_engines_without_a_usable_output_are_refused(tmp_path) -> None:
    generate = load(_generate_graph(tmp_path / "g.onnx", "hvae", True))
    with pytest.raises(UserError, match="scoring needs a density or elbo engine"):
        Scorer(generate)
    with pytest.raises(UserError, match="sampling needs a generate or decode engine"):
        Sampler(load(_elbo_graph(tmp_path / "elbo.onnx")))


def _density_graph(path: Path, shape: tuple[int, int, int]) -> Path:
    """A realnvp-family density engine: log_likelihood = -sum(pixels) / 1000."""
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=FLOAT),
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "scale"], ["log_likelihood"]),
    ]
    constants = [
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("scale", FLOAT, [], [-1e-3]),
    ]
    manifest = dict(family="realnvp", role="density", data_shape=list(shape), latent_shapes=[])
    inputs = [_value("images", UINT8, ["N", *shape])]
    outputs = [_value("log_likelihood", FLOAT, ["N"])]
    return _save(path, nodes, inputs, outputs, constants, manifest)


def _bpd(images: np.ndarray) -> np.ndarray:
    """What the density graph scores, in bits/dim."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return flat.sum(axis=1) / 1000 / (flat.shape[1] * math.log(2))


def _mean_of(stdout: str) -> float:
    return float(stdout.split("bits/dim mean ")[1].split()[0])


def test_cli_likelihood_reads_every_data_source(tmp_path, mnist) -> None:
    engine = _density_graph(tmp_path / "d.onnx", (1, 28, 28))
    code, stdout, err = CLI.run("likelihood", "--engine", engine, "--data", f"mnist:{MNIST_DIR}")
    assert code == 0, err
    assert f"test: {len(mnist.test.images)} images" in stdout
    assert _mean_of(stdout) == pytest.approx(_bpd(mnist.test.images).mean(), abs=1e-4)

    test, train = mnist.test.images[:10], mnist.train.images[:5]
    np.savez(tmp_path / "d.npz", x_train=train, x_test=test)
    code, stdout, err = CLI.run("likelihood", "--engine", engine, "--data", f"npz:{tmp_path}/d.npz")
    assert code == 0, err
    assert _mean_of(stdout) == pytest.approx(_bpd(test).mean(), abs=1e-4)

    (tmp_path / "pics").mkdir()
    for i, image in enumerate(test[:6]):
        Image.fromarray(image[0]).save(tmp_path / "pics" / f"{i}.png")
    args = ("likelihood", "--engine", engine, "--data", f"folder:{tmp_path}/pics", "--split", "all")
    code, stdout, err = CLI.run(*args)
    assert code == 0, err
    assert "all: 6 images" in stdout
    assert _mean_of(stdout) == pytest.approx(_bpd(test[:6]).mean(), abs=1e-4)


def test_cli_likelihood_scores_image_files_by_name(tmp_path, mnist) -> None:
    engine = _density_graph(tmp_path / "d.onnx", (1, 28, 28))
    images = mnist.test.images[:3]
    files = [tmp_path / f"{i}.png" for i in range(3)]
    Image.fromarray(images[0, 0]).save(files[0])
    Image.fromarray(images[1, 0]).save(files[1])
    Image.fromarray(np.repeat(images[2, 0, ..., None], 3, axis=2)).save(files[2])  # RGB -> grey
    out = tmp_path / "scores.csv"
    code, stdout, err = CLI.run("likelihood", "--engine", engine, *files, "--out", out)
    assert code == 0, err
    assert stdout.startswith("files: 3 images")
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["file", "nll"] and [r[0] for r in rows[1:]] == list(map(str, files))
    assert np.allclose([float(r[1]) for r in rows[1:]], _bpd(images), atol=1e-5)

    Image.fromarray(np.zeros((9, 28), np.uint8)).save(tmp_path / "small.png")
    result = CLI.run("likelihood", "--engine", engine, files[0], tmp_path / "small.png")
    CLI.assert_one_line_error(result, "is 28x9 pixels, expected 28x28 (images of shape (1, 28, 28)")
    result = CLI.run("likelihood", "--engine", engine, tmp_path / "none.png")
    CLI.assert_one_line_error(result, "does not exist")
    CLI.assert_one_line_error(CLI.run("likelihood", "--engine", engine), "either image FILES or")
    both = CLI.run("likelihood", "--engine", engine, files[0], "--data", "digits")
    CLI.assert_one_line_error(both, "either image FILES or --data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "0.png", "1.png", "2.png", "d.onnx", "scores.csv", "small.png"
    ]  # fmt: skip


def test_cli_likelihood_scores_every_image_of_a_folder_by_name(tmp_path, digits) -> None:
    """A user's folder is scored whole by default (no training split), each
    CSV row naming its file relative to the folder; --split test scores the
    part gentrain held out, still by name."""
    engine = _density_graph(tmp_path / "d.onnx", (1, 8, 8))
    images = digits.test.images[:6]
    names = ["a.png", "b.png", "sub/c.png", "sub/d.png", "z/e.png", "z/f.png"]
    for name, image in zip(names, images, strict=True):
        (tmp_path / "pics" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(tmp_path / "pics" / name)
    out = tmp_path / "scores.csv"
    args = ("likelihood", "--engine", engine, "--data", f"folder:{tmp_path}/pics", "--out", out)
    code, stdout, err = CLI.run(*args)
    assert code == 0, err
    assert "all: 6 images" in stdout
    rows = [line.split(",") for line in out.read_text().splitlines()]
    assert rows[0] == ["file", "nll"] and [row[0] for row in rows[1:]] == names
    assert np.allclose([float(row[1]) for row in rows[1:]], _bpd(images), atol=1e-5)

    code, stdout, err = CLI.run(*args, "--split", "test")
    assert code == 0, err
    held_out = [names[i] for i in split_indices(6, TEST_FRACTION, seed=0)[1]]
    assert [line.split(",")[0] for line in out.read_text().splitlines()[1:]] == held_out
    assert f"test: {len(held_out)} images" in stdout


def test_sample_refuses_an_npz_larger_than_the_free_space(tmp_path) -> None:
    engine = _generate_graph(tmp_path / "g.onnx", "glow", True)  # 5 bytes a sample
    result = CLI.run("sample", "--engine", engine, "--n", 10**12, "--out", tmp_path / "big.npz")
    CLI.assert_one_line_error(result, "--n 1000000000000 samples of shape (1, 1, 5) need 5.0 TB")
    assert [p.name for p in tmp_path.iterdir()] == ["g.onnx"]  # nothing written


def _foreign_graph(path: Path, batch_dim: str | int = "N", u_type: int = UINT8) -> Path:
    """No manifest: y = relu(conv(x)) with x (batch, 1, 4, 4), v = float(u)."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
        helper.make_node("Cast", ["u"], ["v"], to=FLOAT),
    ]
    weights = helper.make_tensor("w", FLOAT, [2, 1, 3, 3], np.ones(18).tolist())
    inputs = [_value("x", FLOAT, [batch_dim, 1, 4, 4]), _value("u", u_type, [batch_dim, 3])]
    outputs = [_value("y", FLOAT, [batch_dim, 2, 4, 4]), _value("v", FLOAT, [batch_dim, 3])]
    return _save(path, nodes, inputs, outputs, [weights])


def test_foreign_onnx_runs_in_info_and_bench_but_cannot_sample(tmp_path) -> None:
    path = _foreign_graph(tmp_path / "foreign.onnx")
    engine = load(path)
    assert engine.manifest is None and [(s.name, s.shape) for s in engine.inputs] == [
        ("x", ["N", 1, 4, 4]), ("u", ["N", 3])
    ]  # fmt: skip
    out = engine.run(x=np.ones((2, 1, 4, 4)), u=np.full((2, 3), 7, np.uint8))
    assert out["y"][0, 0].tolist()[1] == [6.0, 9.0, 9.0, 6.0] and (out["v"] == 7).all()
    with pytest.raises(UserError, match=r"input 'x' has shape \(2, 1, 5, 4\)"):
        engine.run(x=np.ones((2, 1, 5, 4)), u=np.zeros((2, 3), np.uint8))

    code, stdout, err = CLI.run("info", "--engine", path)
    assert code == 0, err
    assert "no vaeflow manifest" in stdout and "  x " in stdout and "  u " in stdout
    code, stdout, err = CLI.run("bench", "--engine", path, "--batch", "1,3", "--seconds", 0.02)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("foreign.onnx (no vaeflow manifest) on cpu")
    assert "0.000576 MFLOP per sample" in lines[1]  # 2 x (2 x 16 outputs x 9 taps)
    assert [line.split()[0] for line in lines[3:]] == ["1", "3"]

    for command in ("sample", "likelihood"):
        result = CLI.run(command, "--engine", path, *(["--data", "digits"] * (command != "sample")))
        CLI.assert_one_line_error(result, "holds no vaeflow manifest")
        assert "genexport onnx" in result[2]


@pytest.mark.parametrize(
    ("batch_dim", "u_type", "name"), [(1, UINT8, "x"), ("N", TensorProto.INT64, "u")]
)
def test_foreign_onnx_with_ambiguous_inputs_is_refused(tmp_path, batch_dim, u_type, name) -> None:
    path = _foreign_graph(tmp_path / "odd.onnx", batch_dim, u_type)
    with pytest.raises(UserError, match=rf"input '{name}'.*not a float or uint8 tensor with one"):
        load(path)
    CLI.assert_one_line_error(CLI.run("info", "--engine", path), "holds no vaeflow manifest")


def test_flops_of_a_hand_made_graph_are_counted_exactly(tmp_path) -> None:
    rng = np.random.default_rng(0)

    def weights(name: str, *shape: int) -> onnx.TensorProto:
        return helper.make_tensor(name, FLOAT, shape, rng.standard_normal(shape).ravel().tolist())

    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),  # (N, 4, 8, 8)
        helper.make_node("Conv", ["a", "w2"], ["b"], group=2),  # grouped 1x1: (N, 4, 8, 8)
        helper.make_node("Relu", ["b"], ["r"]),  # not counted
        helper.make_node("ConvTranspose", ["r", "w3"], ["c"], strides=[2, 2]),  # (N, 2, 16, 16)
        helper.make_node("Flatten", ["c"], ["f"]),  # (N, 512)
        helper.make_node("MatMul", ["f", "w4"], ["m"]),  # (N, 10)
        helper.make_node("Gemm", ["m", "w5"], ["y"], transB=1),  # (N, 5)
    ]
    initializers = [
        weights("w1", 4, 3, 3, 3),
        weights("w2", 4, 2, 1, 1),
        weights("w3", 4, 2, 2, 2),
        weights("w4", 512, 10),
        weights("w5", 5, 10),
    ]
    path = _save(
        tmp_path / "convs.onnx",
        nodes,
        [_value("x", FLOAT, ["N", 3, 8, 8])],
        [_value("y", FLOAT, ["N", 5])],
        initializers,
    )
    macs = (
        4 * 8 * 8 * (3 * 3 * 3)  # conv: outputs x (C_in x kernel)
        + 4 * 8 * 8 * 2  # grouped: outputs x (C_in / group)
        + 4 * 8 * 8 * (2 * 2 * 2)  # transposed: inputs x (C_out x kernel)
        + 10 * 512  # matmul: outputs x k
        + 5 * 10  # gemm
    )
    assert count_flops(path) == 2 * macs == 29_284
    assert load(path).run(x=np.zeros((3, 3, 8, 8)))["y"].shape == (3, 5)


def test_matmul_peak_is_a_positive_rate() -> None:
    assert 0 < matmul_peak_gflops(threads=1, size=64, calls=3) < 1e5
