"""`genexport triton`: the model repository's configs parse as Triton's text
format (tritonclient's model_config_pb2) and match the engines. No Triton
server runs here; serving itself is not tested."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_helpers import InProcessCli

from genexport.cli import main
from genrun.backends.sidecar import PlanInfo, to_text
from genrun.engine import load
from genrun.manifest import METADATA_KEY
from genrun.manifest_io import from_json, read_from_onnx, to_json

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="the triton extra is not installed"
)
from google.protobuf import text_format  # noqa: E402 (tritonclient brings protobuf)

cli = InProcessCli(main, "genexport")
TYPES = {"uint8": model_config_pb2.TYPE_UINT8, "float32": model_config_pb2.TYPE_FP32}


def _config(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_configs_parse_and_match_the_engines(glow_exported, vae_checkpoint, tmp_path) -> None:
    """conftest's Glow engines as files, and the VAE as a checkpoint (exported first)."""
    repo = tmp_path / "repo"
    vae = vae_checkpoint.parent.name  # the engines' NAME: the run folder's
    sources = [glow_exported["generate"], glow_exported["density"], vae_checkpoint]
    code, _, err = cli.run("triton", *sources, "--out", repo)
    assert code == 0, err
    names = sorted(p.name for p in repo.iterdir())
    assert names == sorted(
        ["tiny-density", "tiny-generate", f"{vae}-decode", f"{vae}-elbo", f"{vae}-encode"]
    )
    for name in names:
        config = _config(repo / name)
        engine = repo / name / "1" / "model.onnx"
        manifest = read_from_onnx(engine)
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 256
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert [(g.count, g.kind) for g in config.instance_group] == [
            (1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)
        ]
        for tensors, specs in ((config.input, manifest.inputs), (config.output, manifest.outputs)):
            assert [t.name for t in tensors] == [s.name for s in specs]
            for tensor, spec in zip(tensors, specs, strict=True):
                assert tensor.data_type == TYPES[spec.dtype]
                dims = list(spec.shape[1:])  # the batch axis is Triton's
                assert list(tensor.dims) == (dims or [1])
                assert tensor.HasField("reshape") == (not dims)  # [1] -> [] for scalars
        for tensor, spec in zip(config.input, manifest.inputs, strict=True):
            assert tensor.optional == (spec.default is not None)
        stored = from_json(config.parameters[METADATA_KEY].string_value)
        assert to_json(stored) == to_json(manifest)
        # The model file is the engine, loadable as it is.
        assert load(engine).manifest.role == name.rsplit("-", 1)[1]
    generate = _config(repo / "tiny-generate")
    assert [t.name for t in generate.input] == ["noise_0", "noise_1", "temperature"]
    density = {t.name: t for t in _config(repo / "tiny-density").input}
    assert density["offset"].optional and not density["images"].optional
    # An existing model is never overwritten.
    cli.assert_one_line_error(cli.run("triton", glow_exported["density"], "--out", repo), "exists")


def test_a_tensorrt_plan_becomes_a_plan_model_with_its_profile_max(vae_exported, tmp_path) -> None:
    plan = tmp_path / "tiny.decode.plan"
    plan.write_bytes(b"not a real plan: Triton is not run here")
    info = PlanInfo(
        tensorrt="10.13.3.9", gpu="NVIDIA H100", compute_capability="9.0",
        hardware_compat="none", profile={"min": 1, "opt": 32, "max": 64}, precision="fp32",
        plan_sha256=hashlib.sha256(plan.read_bytes()).hexdigest(),
        onnx_file=vae_exported["decode"].name, onnx_sha256="0" * 64, workspace_gib=4.0,
    )  # fmt: skip
    sidecar = plan.with_name("tiny.decode.plan.json")
    sidecar.write_text(to_text(read_from_onnx(vae_exported["decode"]), info))
    code, _, err = cli.run("triton", plan, "--out", tmp_path / "repo", "--instances", "2")
    assert code == 0, err
    config = _config(tmp_path / "repo" / "tiny-decode")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 64
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, model_config_pb2.ModelInstanceGroup.KIND_GPU)
    ]
    assert (
        tmp_path / "repo" / "tiny-decode" / "1" / "model.plan"
    ).read_bytes() == plan.read_bytes()
    shutil.rmtree(tmp_path / "repo")
    # A sidecar without the profile (or any other field) is one line, not a KeyError.
    values = json.loads(sidecar.read_text())
    del values["vaeflow.plan"]["profile"]
    sidecar.write_text(json.dumps(values))
    cli.assert_one_line_error(cli.run("triton", plan, "--out", tmp_path / "repo"), "profile")
    sidecar.unlink()
    cli.assert_one_line_error(cli.run("triton", plan, "--out", tmp_path / "repo"), "sidecar")
