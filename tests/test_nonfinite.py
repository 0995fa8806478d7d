"""Non-finite samples never become pixels silently: the Sampler counts them,
`genrun sample --nonfinite error|drop|keep` reports them, and a temperature
is checked in the precision the graph computes in. Hand-made ONNX graphs,
no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import InProcessCli
from onnx import TensorProto, helper

from genrun.cli import main
from genrun.engine import load
from genrun.errors import UserError
from genrun.manifest import (
    CheckpointInfo,
    ExportInfo,
    Manifest,
    PixelMapping,
    TensorSpec,
)
from genrun.manifest_io import write_to_onnx
from genrun.sampler import Sampler

CLI = InProcessCli(main, "genrun")


def sqrt_generator(path: Path, temperature: bool = True) -> Path:
    """images (N, 1, 1, 1) = sqrt(T * noise): NaN for every negative draw
    (about half); pixels = uint8(clip(100 * images, 0, 255))."""
    f32, u8 = TensorProto.FLOAT, TensorProto.UINT8
    inputs = [helper.make_tensor_value_info("noise_0", f32, ["N", 1])]
    nodes, source = [], "noise_0"
    if temperature:
        inputs.append(helper.make_tensor_value_info("temperature", f32, ["N"]))
        nodes += [
            helper.make_node("Unsqueeze", ["temperature", "one"], ["t"]),
            helper.make_node("Mul", ["noise_0", "t"], ["scaled"]),
        ]
        source = "scaled"
    nodes += [
        helper.make_node("Sqrt", [source], ["root"]),
        helper.make_node("Reshape", ["root", "shape"], ["images"]),
        helper.make_node("Mul", ["images", "hundred"], ["big"]),
        helper.make_node("Clip", ["big", "low", "high"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["pixels"], to=u8),
    ]
    constants = [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 1, 1, 1]),
        helper.make_tensor("hundred", f32, [], [100.0]),
        helper.make_tensor("low", f32, [], [0.0]),
        helper.make_tensor("high", f32, [], [255.0]),
    ]
    outputs = [
        helper.make_tensor_value_info("images", f32, ["N", 1, 1, 1]),
        helper.make_tensor_value_info("pixels", u8, ["N", 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "sqrt", inputs, outputs, constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    specs_in = [TensorSpec("noise_0", "float32", ["N", 1])]
    if temperature:
        specs_in.append(TensorSpec("temperature", "float32", ["N"]))
    manifest = Manifest(
        family="glow",
        role="generate",
        precision="fp32",
        inputs=specs_in,
        outputs=[
            TensorSpec("images", "float32", ["N", 1, 1, 1]),
            TensorSpec("pixels", "uint8", ["N", 1, 1, 1]),
        ],
        data_shape=[1, 1, 1],
        latent_shapes=[[1]],
        pixels=PixelMapping(8, [0.0, 2.55], "x / 100", "round(100 x)", 0.0),
        temperature="noise times T",
        checkpoint=CheckpointInfo("c.pt", "00" * 32, 0, {}, {}, {}),
        parity=[],
        export=ExportInfo("hand-made", 18, len(nodes), None, None, {}),
    )
    write_to_onnx(model, manifest)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def engine_path(tmp_path) -> Path:
    return sqrt_generator(tmp_path / "sqrt.generate.onnx")


def _expected_bad(n: int, seed: int = 0) -> np.ndarray:
    """Which of the first n samples draw negative noise (BlockNoise's streams)."""
    blocks = [
        np.random.default_rng([seed, block]).standard_normal((256, 1), dtype=np.float32)
        for block in range(-(-n // 256))
    ]
    return np.concatenate(blocks)[:n, 0] < 0


def test_sampler_counts_and_drops_nonfinite_samples(engine_path) -> None:
    sampler = Sampler(load(engine_path))
    bad = _expected_bad(100)
    batches = sampler.batches(100, 1.0, batch_size=16, nonfinite="keep")
    kept = np.concatenate(list(batches))
    assert len(kept) == 100 and batches.nonfinite == bad.sum() > 10
    assert batches.nonfinite_indices == list(np.flatnonzero(bad))
    dropped = sampler.sample(100, 1.0, batch_size=16, nonfinite="drop")
    np.testing.assert_array_equal(dropped, kept[~bad])
    with pytest.raises(UserError, match=f"{bad.sum()} of 100 samples have NaN or inf"):
        sampler.sample(100, 1.0, nonfinite="error")
    # At T = 0 every sample is sqrt(0) = 0: finite, nothing counted.
    assert Sampler(load(engine_path)).sample(10, 0.0).max() == 0


@pytest.mark.parametrize("temperature_input", [True, False])
def test_temperature_checked_in_the_graphs_float32(tmp_path, temperature_input) -> None:
    sampler = Sampler(load(sqrt_generator(tmp_path / "g.onnx", temperature_input)))
    for bad in (1e39, float("inf"), float("nan"), -1.0, "hot"):
        with pytest.raises(UserError, match="float32"):
            sampler.batches(4, bad)
    sampler.batches(4, 3e38)  # the largest float32s are accepted
    with pytest.raises(UserError, match="nonfinite must be one of"):
        sampler.batches(4, 1.0, nonfinite="ignore")


def test_cli_nonfinite_error_writes_nothing_and_exits_2(engine_path, tmp_path) -> None:
    n_bad = int(_expected_bad(64).sum())
    for out in ("grid.png", "s.npz", "folder"):
        result = CLI.run(
            "sample", "--engine", engine_path, "--temperature", 1, "--out", tmp_path / out
        )
        CLI.assert_one_line_error(result, f"{n_bad} of 64 samples have NaN or inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sqrt.generate.onnx"]  # no litter
    result = CLI.run("sample", "--engine", engine_path, "--temperature", "1e39")
    CLI.assert_one_line_error(result, "finite number >= 0 in the engine's float32")


@pytest.mark.parametrize("out", ["s.npz", "grid.png", "folder"])
def test_cli_nonfinite_drop_and_keep_say_how_many(engine_path, tmp_path, out) -> None:
    bad = _expected_bad(300)
    target = tmp_path / out
    args = ("sample", "--engine", engine_path, "--n", 300, "--batch", 64, "--temperature", 1)
    args = (*args, "--out", target)
    code, stdout, stderr = CLI.run(*args, "--nonfinite", "drop")
    assert code == 0, stderr
    assert f"{300 - bad.sum()} samples" in stdout
    assert f"{bad.sum()} of 300 samples had NaN or inf in their images (dropped)" in stderr
    if out == "s.npz":
        with np.load(target) as loaded:
            images = loaded["images"]
        assert images.shape == (300 - bad.sum(), 1, 1, 1)
        kept = Sampler(load(engine_path)).sample(300, 1.0, nonfinite="keep")
        np.testing.assert_array_equal(images, kept[~bad])
        target.unlink()
        code, stdout, stderr = CLI.run(*args, "--nonfinite", "keep")
        assert code == 0 and "300 samples" in stdout and "(kept" in stderr
        with np.load(target) as loaded:
            assert loaded["images"].shape == (300, 1, 1, 1)
    elif out == "folder":
        assert len(list(target.iterdir())) == 300 - bad.sum()
