"""GPU deployment: TensorRT plans and their sidecars, backend dispatch by
file, the ONNX Runtime GPU provider settings, and every one-line error with
tensorrt / cuda-python absent.

On a machine without a GPU (CI, and every machine this was written on),
tensorrt and cuda.bindings are replaced by tests/fake_gpu.py, which runs the
"plan" in ONNX Runtime CPU: that checks vaeflow's own logic (order of checks,
buffers, slicing, parity, sidecars, graph replay). Tests marked `gpu` run the
real thing and skip, with the reason, where no CUDA device or package is."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import fake_gpu
import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli

from genexport.cli import main as genexport_main
from genexport.export import export_checkpoint
from genexport.tensorrt import PlanOptions, export_plans
from genrun.backends.onnxruntime import OnnxRuntimeRunner, graph_specs, provider_options
from genrun.backends.sidecar import read_sidecar, sidecar_path
from genrun.bench import random_inputs
from genrun.cli import main as genrun_main
from genrun.engine import available_providers, load, ort_session
from genrun.errors import UserError
from genrun.readers import load_data
from genrun.sampler import Sampler
from genrun.scorer import Scorer
from gentrain.models import Glow, GlowConfig
from gentrain.train import TrainConfig, Trainer

SMALL = dict(steps=4, batch_size=32, warmup=1, eval_every=4, ckpt_every=4, log_every=4)
OPTIONS = dict(opt_batch=8, max_batch=32)  # small profiles keep the parity runs fast
GENEXPORT = InProcessCli(genexport_main, "genexport")
GENRUN = InProcessCli(genrun_main, "genrun")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory) -> Path:
    """A tiny Glow (levels 2, depth 2, hidden 16) trained 4 steps."""
    out = tmp_path_factory.mktemp("glow")
    torch.manual_seed(0)
    model = Glow(GlowConfig(digits.shape, levels=2, depth=2, hidden=16))
    config = TrainConfig(optimizer="adamax", lr=2e-3, clip=50.0, device="cpu", **SMALL)
    Trainer(model, digits, config, out).fit()
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def onnx_engines(checkpoint, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("onnx")
    return {e.graph.role: e.path for e in export_checkpoint(checkpoint, out, name="tiny")}


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory) -> Path:
    """The folder of plans built once through genexport with the fake TensorRT."""
    out = tmp_path_factory.mktemp("plans")
    with pytest.MonkeyPatch.context() as patch:
        fake_gpu.install(patch)
        export_plans(checkpoint, out, options=PlanOptions(**OPTIONS), name="tiny")
    return out


@pytest.fixture()
def plans(built, tmp_path, monkeypatch) -> dict[str, Path]:
    """A copy of the plans (tests may spoil them), with a fresh fake TensorRT."""
    fake_gpu.install(monkeypatch)
    for path in built.iterdir():
        shutil.copy(path, tmp_path)
    return {role: tmp_path / f"tiny.{role}.plan" for role in ("generate", "density")}


def one_line(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_build_writes_plans_sidecars_and_timing_cache_after_parity(plans, tmp_path) -> None:
    trt = sys.modules["tensorrt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tensorrt.timing-cache",
        "tiny.density.onnx",
        "tiny.density.plan",
        "tiny.density.plan.json",
        "tiny.generate.onnx",
        "tiny.generate.plan",
        "tiny.generate.plan.json",
    ]
    # One build per role shares the timing cache: two builds appended to it.
    assert (tmp_path / "tensorrt.timing-cache").read_bytes() == b"++"
    header = fake_gpu.read_header(plans["generate"].read_bytes())
    assert header["flags"] == 1 << 5  # STRONGLY_TYPED: precision from the graph
    assert header["workspace"] == 4 << 30 and header["hardware"] == 0
    assert header["profile"]["noise_0"] == [[1, 2, 4, 4], [8, 2, 4, 4], [32, 2, 4, 4]]
    assert set(header["profile"]) == {"noise_0", "noise_1", "temperature"}
    manifest, info = read_sidecar(plans["density"])
    assert (manifest.family, manifest.role, manifest.precision) == ("glow", "density", "fp32")
    assert info.profile == {"min": 1, "opt": 8, "max": 32} and info.tensorrt == trt.__version__
    assert (info.gpu, info.compute_capability, info.hardware_compat) == ("Fake GPU", "9.0", "none")
    assert info.onnx_file == "tiny.density.onnx"
    check = manifest.parity[-1]
    assert (check.reference, check.batch_sizes) == ("onnxruntime-cpu", [1, 7, 8, 32])
    assert {"bits_per_dim", "round_trip.images", "round_trip.pixels"} <= check.max_abs_error.keys()
    assert not check.failures() and check.max_abs_error["bits_per_dim"] == 0.0


def test_plans_sample_and_score_as_their_onnx_engines(plans, digits) -> None:
    plan = load(plans["generate"])
    assert (plan.backend, plan.provider, plan.family) == ("tensorrt", "tensorrt", "glow")
    onnx = load(plans["generate"].with_suffix(".onnx"), provider="cpu")
    # 70 > the profile's max 32: run in slices, the same samples.
    expected = Sampler(onnx).sample(70, temperature=0.8, seed=2, batch_size=70)
    assert (Sampler(plan).sample(70, temperature=0.8, seed=2, batch_size=70) == expected).all()
    assert plan.runner.host["pixels"].array.size == 32 * 64  # sized once at the profile's max
    images = digits.test.images[:40]
    density = Scorer(load(plans["density"]))
    assert np.array_equal(
        density.bits_per_dim(images, batch_size=40),
        Scorer(load(plans["density"].with_suffix(".onnx"))).bits_per_dim(images, batch_size=40),
    )


def test_cuda_graphs_replay_one_graph_per_batch_size(plans) -> None:
    trt = sys.modules["tensorrt"]
    plain = Sampler(load(plans["generate"])).sample(20, seed=1, batch_size=8)
    engine = load(plans["generate"], cuda_graphs=True)
    executions = trt.executions
    graphed = Sampler(engine).sample(20, seed=1, batch_size=8)  # batches 8, 8, 4
    assert (graphed == plain).all() and sorted(engine.runner.graphs) == [4, 8]
    # Per new size one plain enqueue and one captured; a replay enqueues nothing.
    assert trt.executions - executions == 4


def test_plan_refused_before_deserialising_when_built_elsewhere(plans, monkeypatch) -> None:
    trt = sys.modules["tensorrt"]
    plan = plans["generate"]
    sidecar = sidecar_path(plan)
    values = json.loads(sidecar.read_text())
    values["vaeflow.plan"]["tensorrt"] = "10.0.1.6"
    sidecar.write_text(json.dumps(values))
    message = one_line(lambda: load(plan))
    assert "TensorRT 10.0.1.6" in message and f"TensorRT {trt.__version__}" in message
    values["vaeflow.plan"]["tensorrt"] = trt.__version__
    values["vaeflow.plan"]["compute_capability"] = "8.6"
    sidecar.write_text(json.dumps(values))
    message = one_line(lambda: load(plan))
    assert "compute capability 8.6" in message and "this GPU is 9.0" in message
    assert trt.deserialized == 0  # no load got that far
    values["vaeflow.plan"]["hardware_compat"] = "ampere+"
    sidecar.write_text(json.dumps(values))
    assert load(plan).plan.hardware_compat == "ampere+"  # any GPU >= 8.0


def test_sidecar_must_exist_and_belong_to_the_plan(plans, tmp_path) -> None:
    plan = plans["density"]
    copy = tmp_path / "copy.plan"
    shutil.copy(plan, copy)
    assert "has no sidecar copy.plan.json" in one_line(lambda: load(copy))
    shutil.copy(sidecar_path(plans["generate"]), sidecar_path(copy))
    assert "do not belong together" in one_line(lambda: load(copy))
    sidecar_path(copy).write_text("{}")
    assert "not a vaeflow plan sidecar" in one_line(lambda: load(copy))


def test_every_missing_piece_is_one_line_naming_its_fix(plans, monkeypatch) -> None:
    plan = plans["generate"]
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    assert "pip install 'vaeflow[tensorrt]'" in one_line(lambda: load(plan))
    fake_gpu.install(monkeypatch)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "pip install 'vaeflow[gpu]'" in one_line(lambda: load(plan))
    fake_gpu.install(monkeypatch, devices=0)
    assert "no CUDA GPU found" in one_line(lambda: load(plan))
    assert "only TensorRT runs" in one_line(lambda: load(plan, provider="cpu"))
    assert "does not exist" in one_line(lambda: load(plan.with_name("none.plan")))


def test_cli_without_tensorrt_is_one_line(checkpoint, onnx_engines, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = GENEXPORT.run("tensorrt", checkpoint, "--out", tmp_path)
    GENEXPORT.assert_one_line_error(result, "pip install 'vaeflow[tensorrt]'")
    assert not any(tmp_path.iterdir())  # nothing exported when no plan can be built
    fake_gpu.install(monkeypatch)
    result = GENEXPORT.run("tensorrt", onnx_engines["generate"], "--precision", "fp16")
    GENEXPORT.assert_one_line_error(result, "a plan's precision comes from its graph")
    result = GENEXPORT.run(
        "tensorrt", onnx_engines["generate"], "--opt-batch", "9", "--max-batch", "8"
    )
    GENEXPORT.assert_one_line_error(result, "1 <= opt <= max")
    result = GENRUN.run("bench", "--engine", onnx_engines["generate"], "--cuda-graphs")
    GENRUN.assert_one_line_error(result, "--cuda-graphs applies to TensorRT .plan engines")


def test_cli_builds_from_an_onnx_engine_and_genrun_runs_the_plan(
    onnx_engines, tmp_path, monkeypatch
) -> None:
    fake_gpu.install(monkeypatch)
    source = onnx_engines["generate"]
    code, out, err = GENEXPORT.run(
        "tensorrt", source, "--out", tmp_path, "--opt-batch", "4", "--max-batch", "16",
        "--hardware-compat", "ampere+",
    )  # fmt: skip
    assert code == 0, err
    assert "tiny.generate.plan" in out and "1/4/16" in out and "all plan parity checks" in out
    plan = tmp_path / "tiny.generate.plan"
    code, out, err = GENRUN.run("info", "--engine", plan)
    assert code == 0 and "tensorrt   10.13.3.9, built on Fake GPU" in out, err
    assert "hardware compatibility ampere+" in out and "batch min 1, opt 4, max 16" in out
    code, out, err = GENRUN.run("sample", "--engine", plan, "--n", "9", "--out", tmp_path / "s.npz")
    assert code == 0, err
    expected = Sampler(load(source)).sample(9, seed=0)
    assert (np.load(tmp_path / "s.npz")["images"] == expected).all()


def test_parity_miss_writes_nothing(onnx_engines, tmp_path, monkeypatch) -> None:
    trt, _ = fake_gpu.install(monkeypatch)
    trt.output_offset = 1e-3  # a "GPU" off by 1e-3 everywhere
    with pytest.raises(UserError, match="plan parity check failed, no plan written"):
        export_plans(onnx_engines["density"], tmp_path, options=PlanOptions(**OPTIONS))
    assert not list(tmp_path.glob("*.plan*")) and not list(tmp_path.glob("*timing*"))


def test_pipelined_batches_stop_cleanly(onnx_engines) -> None:
    sampler = Sampler(load(onnx_engines["generate"]))
    batches = sampler.batches(100, seed=5, batch_size=10)
    first = next(batches)
    batches.close()  # the worker's batch in flight is finished, nothing queued
    assert (first == sampler.sample(10, seed=5)).all()


def test_onnxruntime_gpu_settings_and_io_binding(onnx_engines, tmp_path) -> None:
    path = tmp_path / "e.onnx"
    assert provider_options("cuda", path, [])["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    engine = load(onnx_engines["density"])
    options = provider_options("tensorrt", path, graph_specs(engine.session.get_inputs()))
    assert options["trt_engine_cache_path"] == str(tmp_path / "e.onnx.trt-cache")
    assert (tmp_path / "e.onnx.trt-cache").is_dir() and "trt_fp16_enable" not in options
    assert options["trt_profile_max_shapes"] == "images:4096x1x8x8"
    # The IO-binding path of the runner (GPU providers), here bound on the CPU.
    bound = OnnxRuntimeRunner(engine.session, engine.path, "cpu", io_binding=True)
    images = np.arange(3 * 64, dtype=np.uint8).reshape(3, 1, 8, 8)
    plain = engine.runner.run({"images": images})
    for name, value in bound.run({"images": images}).items():
        assert np.array_equal(value, plain[name])


# --- on a GPU ----------------------------------------------------------------


def _need(provider: str) -> None:
    if provider not in available_providers():
        pytest.skip(f"no {provider} execution provider here (needs onnxruntime-gpu and a GPU)")


@pytest.mark.gpu
@pytest.mark.parametrize("role", ["generate", "density"])
def test_onnxruntime_cuda_matches_cpu(onnx_engines, role) -> None:
    _need("cuda")
    path = onnx_engines[role]
    cpu, cuda = load(path, provider="cpu"), load(path, provider="cuda")
    assert cuda.provider == "cuda"
    check = cpu.manifest.parity[-1]
    feeds = random_inputs(cpu, 64)
    want, got = cpu.run(**feeds), cuda.run(**feeds)
    for name, bound in check.tolerance.items():
        if name in got:
            assert np.abs(got[name].astype(float) - want[name]).max() <= bound, name


@pytest.mark.gpu
def test_sampling_on_cuda_equals_cpu_up_to_precision(onnx_engines) -> None:
    _need("cuda")
    path = onnx_engines["generate"]
    cpu = Sampler(load(path, provider="cpu")).sample(300, seed=3)
    cuda = Sampler(load(path, provider="cuda")).sample(300, seed=3)
    assert (np.abs(cpu.astype(int) - cuda).max()) <= 255 // 31 + 1  # one level at 5 bits


@pytest.mark.gpu
def test_real_tensorrt_plan_parity_and_graphs(checkpoint, tmp_path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed here")
    built = export_plans(checkpoint, tmp_path, options=PlanOptions(**OPTIONS), name="tiny")
    assert all(not plan.parity.failures() for plan in built)
    path = tmp_path / "tiny.generate.plan"
    plain = load(path).run(**random_inputs(load(path), 8))
    graphed_engine = load(path, cuda_graphs=True)
    feeds = random_inputs(graphed_engine, 8)
    for _ in range(2):  # capture, then replay
        graphed = graphed_engine.run(**feeds)
    for name, value in plain.items():
        assert np.array_equal(value, graphed[name]), name
    # Polygraphy as an independent runner of the same plan.
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    with TrtRunner(EngineFromBytes(BytesFromPath(str(path)))) as runner:
        theirs = runner.infer(feeds)
    for name, value in graphed.items():
        assert np.allclose(np.asarray(theirs[name]), value, atol=1e-5), name


def test_sessions_are_made_in_one_place() -> None:
    """genexport and the manifest reader open sessions through genrun.engine."""
    root = Path(__file__).resolve().parents[1]
    makers = [
        path.relative_to(root).as_posix()
        for folder in ("genrun", "genexport")
        for path in (root / folder).rglob("*.py")
        if "InferenceSession(" in path.read_text()
    ]
    assert makers == ["genrun/backends/onnxruntime.py"]
    assert ort_session is not None
