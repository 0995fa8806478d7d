"""genexport: checkpoints -> verified ONNX engines. Parity with PyTorch at
several batch sizes, the flow round trip, engines that run in plain
onnxruntime, standard operators only, float16 error, the CLI and its errors.

Each graph is exported once (the exporter takes seconds a graph); the tiny
checkpoints and their engines are conftest's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_helpers import InProcessCli

from genexport import verify
from genexport.cli import main
from genexport.export import export_checkpoint
from genrun.errors import UserError
from genrun.manifest_io import from_json, read_from_onnx
from gentrain.checkpoint import save_checkpoint
from gentrain.models import Glow, GlowConfig
from gentrain.models.quantization import dequantize

CLI = InProcessCli(main, "genexport")
genexport = CLI.run
assert_one_line_error = CLI.assert_one_line_error


@pytest.fixture(scope="module")
def glow_engines(glow_export_run) -> tuple[dict[str, Path], str]:
    """Both Glow graphs through the CLI, as a user runs it (conftest's); (paths, stdout)."""
    return glow_export_run


@pytest.fixture(scope="module")
def fp16_engines(glow_checkpoint, vae_checkpoint, tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("fp16")
    return [
        engine.path
        for checkpoint, roles in ((glow_checkpoint, "density"), (vae_checkpoint, "elbo"))
        for engine in export_checkpoint(checkpoint, out, roles, precision="fp16")
    ]


def test_cli_prints_files_sizes_node_counts_and_parity(glow_engines) -> None:
    paths, stdout = glow_engines
    assert all(path.is_file() for path in paths.values())
    umask = os.umask(0)
    os.umask(umask)
    for path in paths.values():
        assert str(path) in stdout
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert "round_trip.images" in stdout
    assert "before -> after folding" not in stdout  # counted only when asked (next test)
    assert "all parity checks passed" in stdout


@pytest.mark.parametrize("role", ["generate", "density"])
def test_glow_parity_at_every_batch_size_is_recorded(glow_engines, role) -> None:
    manifest = read_from_onnx(glow_engines[0][role])
    (check,) = manifest.parity
    assert check.reference == "pytorch-float32" and check.batch_sizes == [1, 7, 64]
    assert not check.failures()
    assert check.tolerance["round_trip.images"] == 1e-4
    expected = {"generate": ["images"], "density": ["bits_per_dim"]}
    for name in expected[role]:
        assert check.tolerance[name] == 1e-4 and check.max_abs_error[name] <= 1e-4
    for name in [n for n in check.max_abs_error if n.startswith("latent_")]:
        # Relative to the latents' largest magnitude, never looser than absolute 1e-4.
        assert 1e-4 <= check.tolerance[name] < 1e-2
        assert check.max_abs_error[name] <= check.tolerance[name]
    assert manifest.export.nodes == manifest.export.nodes_folded
    assert manifest.export.nodes_unfolded is None  # a second export, only when asked


def test_count_unfolded_reports_the_nodes_folding_saves(glow_checkpoint, tmp_path) -> None:
    """--count-unfolded exports the graph unfolded too, for its node count alone."""
    code, stdout, err = genexport(
        "onnx", glow_checkpoint, "--out", tmp_path, "--graphs", "generate", "--count-unfolded"
    )
    assert code == 0, err
    export = read_from_onnx(tmp_path / "glow.generate.onnx").export
    assert export.nodes == export.nodes_folded < export.nodes_unfolded
    assert f"{export.nodes_unfolded} -> {export.nodes_folded}" in stdout
    code, out, _ = genexport("info", tmp_path / "glow.generate.onnx")
    assert code == 0
    assert f"{export.nodes_unfolded} before, {export.nodes_folded} after folding" in out


def test_density_engine_matches_gentrain_eval_on_real_images(
    glow_engines, glow_checkpoint, digits
) -> None:
    """Default offset (bin centres) = `gentrain eval`'s bpd_density_at_centers, at batch 37."""
    from genexport.onnx import session
    from gentrain.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(glow_checkpoint))
    images = digits.test.images[:5]
    bpd, log_px, *_ = session(glow_engines[0]["density"]).run(None, {"images": images})
    expected = model.evaluate(torch.from_numpy(images))["bpd_density_at_centers"].numpy()
    assert np.abs(bpd - expected).max() <= 1e-4
    assert np.allclose(-log_px / (64 * np.log(2)), bpd, atol=1e-5)


def test_engines_run_in_plain_onnxruntime_with_no_project_code(glow_engines, tmp_path) -> None:
    """Score real images, push their latents back through generate, and read
    the manifest, importing nothing but onnxruntime and numpy."""
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import onnxruntime as ort
        density, generate = (ort.InferenceSession(p, providers=["CPUExecutionProvider"])
                             for p in sys.argv[1:3])
        manifest = json.loads(density.get_modelmeta().custom_metadata_map["vaeflow.manifest"])
        c, h, w = manifest["data_shape"]
        images = np.random.default_rng(0).integers(0, 256, (3, c, h, w), dtype=np.uint8)
        bpd, _, *latents = density.run(None, {"images": images})
        feeds = {f"noise_{i}": z for i, z in enumerate(latents)}
        back, pixels = generate.run(None, {**feeds, "temperature": np.ones(3, np.float32)})
        assert np.abs(back - ((images + 0.5) / 256 - 0.5)).max() < 1e-3, "round trip"
        assert (pixels == images).all() and bpd.shape == (3,) and np.isfinite(bpd).all()
        banned = ("torch", "onnx", "genrun", "gentrain", "genexport")
        ours = [m for m in sys.modules if m.split(".")[0] in banned]
        assert not ours, ours
        print(manifest["role"], manifest["family"])
        """
    )
    paths = glow_engines[0]
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(paths["density"]), str(paths["generate"])],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["density", "glow"]


def test_vae_graphs_pass_parity(vae_exported) -> None:
    assert sorted(vae_exported) == ["decode", "elbo", "encode"]
    for role, path in vae_exported.items():
        manifest = read_from_onnx(path)
        assert manifest.role == role and manifest.family == "vae"
        assert manifest.parity[0].batch_sizes == [1, 7, 64] and not manifest.parity[0].failures()
        assert manifest.export.nodes_unfolded is None
    elbo = read_from_onnx(vae_exported["elbo"])
    assert [spec.name for spec in elbo.inputs] == ["images", "eps"]
    assert {s.name: s.shape for s in elbo.outputs}["log_weight"] == ["N"]


@pytest.mark.slow  # exporting the fp16 engines: 18 s on 2 loaded cores
def test_every_graph_uses_standard_operators_only(glow_engines, vae_exported, fp16_engines) -> None:
    for path in [*glow_engines[0].values(), *vae_exported.values(), *fp16_engines]:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, path
        assert {entry.domain for entry in model.opset_import} <= {"", "ai.onnx"}, path
        assert 18 <= read_from_onnx(path).export.opset <= 20
        external = onnx.TensorProto.EXTERNAL
        assert not any(i.data_location == external for i in model.graph.initializer), path


@pytest.mark.slow  # exporting the fp16 engines: 18 s on 2 loaded cores
def test_fp16_graphs_keep_float32_io_and_sums_and_bounded_error(fp16_engines) -> None:
    assert [path.name.split(".", 1)[1] for path in fp16_engines] == [
        "density.fp16.onnx",
        "elbo.fp16.onnx",
    ]
    for path in fp16_engines:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
        for value in [*model.graph.input, *model.graph.output]:
            assert value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16
        weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert weights, "the bulk of the graph is float16"
        sums = [node for node in model.graph.node if node.op_type == "ReduceSum"]
        assert sums and all(types[node.input[0]] == onnx.TensorProto.FLOAT for node in sums)
        manifest = read_from_onnx(path)
        fp32_check, fp16_check = manifest.parity
        assert (fp32_check.precision, fp32_check.reference) == ("fp32", "pytorch-float32")
        assert (fp16_check.precision, fp16_check.reference) == ("fp16", "onnx-float32")
        assert not fp16_check.failures()
    density = read_from_onnx(fp16_engines[0]).parity[1].max_abs_error
    assert 0 < density["bits_per_dim"] <= 1e-2 and density["latent_0"] <= 5e-2


def test_failing_parity_leaves_no_file(vae_checkpoint, tmp_path, monkeypatch) -> None:
    """Bounds tighter than float32 can meet: the export fails and writes nothing."""
    monkeypatch.setitem(verify.TOLERANCES, "fp32", dict.fromkeys(["image", "bpd", "latent"], 1e-12))
    with pytest.raises(UserError, match="parity check failed, no engine written: encode: mu"):
        export_checkpoint(vae_checkpoint, tmp_path, "encode,decode")
    assert list(tmp_path.iterdir()) == []


def test_opset_20_is_recorded(vae_checkpoint, tmp_path) -> None:
    (engine,) = export_checkpoint(vae_checkpoint, tmp_path, "encode", opset=20)
    assert read_from_onnx(engine.path).export.opset == 20
    assert engine.path.name == f"{vae_checkpoint.parent.name}.encode.onnx"


def test_verify_and_info_commands(glow_engines, glow_checkpoint, vae_checkpoint) -> None:
    density = glow_engines[0]["density"]
    code, out, err = genexport("verify", density, "--ckpt", glow_checkpoint)
    assert code == 0, err
    assert "ok" in out and "bits_per_dim" in out
    assert_one_line_error(
        genexport("verify", density, "--ckpt", vae_checkpoint),
        "exported from another checkpoint",
    )
    code, out, _ = genexport("info", density)
    assert code == 0
    for text in ("glow density, fp32", "offset", "(default 0.5)", "latent_1", "sha256", "parity"):
        assert text in out, text
    code, out, _ = genexport("info", glow_engines[0]["generate"], "--json")
    assert code == 0 and from_json(out).temperature


def test_bad_inputs_are_one_line_errors(glow_checkpoint, vae_checkpoint, digits, tmp_path) -> None:
    run = genexport
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert_one_line_error(run("onnx", text, "--out", tmp_path), "notes.txt")
    assert_one_line_error(run("onnx", tmp_path / "missing.pt"), "does not exist")
    foreign = save_checkpoint(
        tmp_path / "gan.pt", {"family": "gan", "model_config": {}, "model": {}, "step": 0}
    )
    assert_one_line_error(run("onnx", foreign), "unknown family 'gan'")
    untrained = Glow(GlowConfig(digits.shape, levels=2, depth=1, hidden=8))
    fresh = save_checkpoint(
        tmp_path / "fresh.pt",
        {
            "family": "glow",
            "model_config": untrained.config.to_dict(),
            "model": untrained.state_dict(),
            "step": 0,
        },
    )
    assert_one_line_error(run("onnx", fresh), "ActNorm layers were never initialised")
    assert_one_line_error(run("onnx", glow_checkpoint, "--graphs", "decode"), "no 'decode' graph")
    assert_one_line_error(run("onnx", vae_checkpoint, "--graphs", "elbo,bogus"), "no 'bogus'")
    assert_one_line_error(run("onnx", vae_checkpoint, "--precision", "int8"), "int8")
    assert_one_line_error(run("onnx", vae_checkpoint, "--opset", 17), "--opset 17")
    assert_one_line_error(run("info", text), "not an ONNX model")
    assert list(tmp_path.glob("*.onnx")) == []


def test_round_trip_reaches_the_bin_centres(glow_engines) -> None:
    from genexport.onnx import session

    density, generate = (session(glow_engines[0][role]) for role in ("density", "generate"))
    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    _, _, *latents = density.run(None, {"images": images.numpy()})
    feeds = {f"noise_{i}": z for i, z in enumerate(latents)}
    back, pixels = generate.run(None, {**feeds, "temperature": np.ones(7, np.float32)})
    assert np.abs(back - dequantize(images, 8).numpy()).max() <= 1e-4
    assert (pixels == images.numpy()).all()


def test_parity_treats_equal_infinities_as_agreement_and_nan_as_failure() -> None:
    from genrun.compare import max_abs as _max_abs

    inf = float("inf")
    assert _max_abs(np.array([inf, 1.0]), np.array([inf, 1.0 + 1e-6])) == pytest.approx(1e-6)
    assert _max_abs(np.array([inf]), np.array([-inf])) == inf
    assert _max_abs(np.array([float("nan")]), np.array([float("nan")])) == inf
    assert _max_abs(np.zeros(2), np.zeros(3)) == inf


def test_samples_that_diverge_in_both_are_left_out_and_one_sided_divergence_fails() -> None:
    from types import SimpleNamespace

    from genexport.verify import diverged_rule
    from genrun.compare import _without_diverged
    from genrun.compare import max_abs as _max_abs

    graph = SimpleNamespace(checks={"images": "image", "pixels": "pixels"})
    good = np.full((1, 4), 0.25, np.float32)
    want_images = np.concatenate([good, [[np.inf, 1e30, 0.0, 0.0]]]).astype(np.float32)
    want_pixels = np.array([[128] * 4, [255, 255, 0, 0]], np.uint8)

    # The engine overflows the same sample differently (3e30 for inf, 0 for 255):
    # only the sane sample is compared, and it agrees.
    got = {
        "images": np.concatenate([good, [[3e30, np.inf, 0.0, 0.0]]]).astype(np.float32),
        "pixels": np.array([[128] * 4, [0, 255, 0, 0]], np.uint8),
    }
    kept_got, kept_want = _without_diverged(
        got, {"images": want_images, "pixels": want_pixels}, diverged_rule(graph)
    )
    assert _max_abs(kept_got["images"], kept_want["images"]) == 0.0
    assert _max_abs(kept_got["pixels"], kept_want["pixels"]) == 0.0

    # A sample that diverges in the engine alone is compared, and fails any bound.
    one_sided = {"images": np.concatenate([good, [[np.inf, 0.0, 0.0, 0.0]]]), "pixels": want_pixels}
    sane_want = {"images": np.concatenate([good, good]), "pixels": want_pixels}
    kept_got, kept_want = _without_diverged(one_sided, sane_want, diverged_rule(graph))
    assert _max_abs(kept_got["images"], kept_want["images"]) == float("inf")
