"""GPU deployment: TensorRT plans and their sidecars, backend dispatch by
file, the ONNX Runtime GPU providers (what actually runs, what is missing),
runner lifecycles, and every one-line error with tensorrt / cuda-python absent.

On a machine without a GPU (CI, and every machine this was written on),
tensorrt and cuda.bindings are replaced by tests/fake_gpu.py, which runs the
"plan" in ONNX Runtime CPU and is as strict as NVIDIA's modules where that
matters (return values, asynchronous streams, capture rules): that checks
vaeflow's own logic. NVIDIA's API itself is checked against the real
packages that install without a GPU: every CUDA call the runner makes goes
through the real cuda.bindings (up to its driver error), and the fake's
TensorRT names, signatures and enum values are compared with tensorrt-stubs
10.13 (mypy checks our TensorRT code against the same stubs). Tests marked
`gpu` run the real thing and skip, with the reason, where no CUDA device or
package is."""

from __future__ import annotations

import ast
import inspect
import json
import logging
import re
import shutil
import sys
from pathlib import Path

import fake_gpu
import numpy as np
import pytest
from cli_helpers import InProcessCli

from genexport.cli import main as genexport_main
from genexport.tensorrt import PlanOptions, export_plans
from genrun.backends import nvidia
from genrun.backends import onnxruntime as ort_backend
from genrun.backends.sidecar import read_sidecar, sidecar_path
from genrun.bench import random_inputs
from genrun.cli import main as genrun_main
from genrun.compare import Case, compare, random_feeds
from genrun.engine import available_providers, load
from genrun.errors import UserError
from genrun.manifest_io import read_from_onnx
from genrun.sampler import Sampler
from genrun.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(opt_batch=8, max_batch=32)  # small profiles keep the parity runs fast
GENEXPORT = InProcessCli(genexport_main, "genexport")
GENRUN = InProcessCli(genrun_main, "genrun")
# Where scripts/setup.sh puts tensorrt-stubs (a folder of its own: the stubs
# install an importable, empty `tensorrt` package that must not shadow the real one).
STUBS = ROOT / ".venv" / "typecheck" / "tensorrt_bindings" / "tensorrt.pyi"


@pytest.fixture(scope="module")
def built(glow_checkpoint, tmp_path_factory) -> Path:
    """The folder of plans built once through genexport with the fake TensorRT."""
    out = tmp_path_factory.mktemp("plans")
    with pytest.MonkeyPatch.context() as patch:
        fake_gpu.install(patch)
        export_plans(glow_checkpoint, out, options=PlanOptions(**OPTIONS), name="tiny")
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
    assert header["flags"] == 1 << 1  # STRONGLY_TYPED (1 in TensorRT 10): precision from the graph
    assert header["tf32"] is False  # float32 stays float32 (TensorRT's default is TF32 on)
    assert header["workspace"] == 4 << 30 and header["hardware"] == 0
    assert header["profile"]["noise_0"] == [[1, 2, 4, 4], [8, 2, 4, 4], [32, 2, 4, 4]]
    assert set(header["profile"]) == {"noise_0", "noise_1", "temperature"}
    manifest, info = read_sidecar(plans["density"])
    assert (manifest.family, manifest.role, manifest.precision) == ("glow", "density", "fp32")
    assert info.profile == {"min": 1, "opt": 8, "max": 32} and info.tensorrt == trt.__version__
    assert (info.gpu, info.compute_capability, info.hardware_compat) == ("Fake GPU", "9.0", "none")
    assert info.onnx_file == "tiny.density.onnx" and info.tf32 is False
    check = manifest.parity[-1]
    assert (check.reference, check.batch_sizes) == ("onnxruntime-cpu", [1, 7, 8, 32])
    assert {"bits_per_dim", "round_trip.images", "round_trip.pixels"} <= check.max_abs_error.keys()
    assert not check.failures() and check.max_abs_error["bits_per_dim"] == 0.0


def test_plans_sample_and_score_as_their_onnx_engines(plans, digits) -> None:
    with load(plans["generate"]) as plan, load(plans["generate"].with_suffix(".onnx")) as onnx:
        assert (plan.provider, plan.family, plan.settings) == ("tensorrt", "glow", {"tf32": "off"})
        # 70 > the profile's max 32: run in slices, the same samples.
        expected = Sampler(onnx).sample(70, temperature=0.8, seed=2, batch_size=70)
        assert (Sampler(plan).sample(70, temperature=0.8, seed=2, batch_size=70) == expected).all()
        assert plan.runner.host["pixels"].array.size == 32 * 64  # sized once at the profile's max
    images = digits.test.images[:40]
    with load(plans["density"]) as plan, load(plans["density"].with_suffix(".onnx")) as onnx:
        assert np.array_equal(
            Scorer(plan).bits_per_dim(images, batch_size=40),
            Scorer(onnx).bits_per_dim(images, batch_size=40),
        )


def test_the_runner_waits_for_its_stream(plans) -> None:
    """The fake stream runs nothing before cudaStreamSynchronize: without the
    runner's one synchronisation per call its outputs would be stale."""
    cudart = sys.modules["cuda.bindings.runtime"]
    with load(plans["generate"]) as engine:
        feeds = random_inputs(engine, 5)
        before = cudart.syncs
        first = engine.run(**feeds)
        assert cudart.syncs == before + 1
        second = engine.run(**random_inputs(engine, 3))
    assert not np.array_equal(first["images"][:3], second["images"])


def test_cuda_graphs_hold_per_batch_size_across_shape_changes(plans) -> None:
    """Batches 8, 4, 8, 4, 32 with graphs equal a plain runner's: each graphed
    size has its own execution context, never reshaped after its capture (the
    fake writes NaN for a graph replayed after its context changed shape)."""
    trt = sys.modules["tensorrt"]
    with load(plans["generate"]) as plain, load(plans["generate"], cuda_graphs=True) as graphed:
        for batch in (8, 4, 8, 4, 32):
            feeds = random_inputs(plain, batch)
            want, got = plain.run(**feeds), graphed.run(**feeds)
            for name, value in want.items():
                assert np.array_equal(got[name], value), (batch, name)
        assert sorted(graphed.runner.graphs) == [4, 8, 32]
        executions = trt.executions
        graphed.run(**random_inputs(plain, 8))
        assert trt.executions == executions  # a replay enqueues nothing new
    sampler_plain = Sampler(load(plans["generate"])).sample(20, seed=1, batch_size=8)
    with load(plans["generate"], cuda_graphs=True) as engine:
        assert (Sampler(engine).sample(20, seed=1, batch_size=8) == sampler_plain).all()


def test_a_failed_capture_runs_without_a_graph_and_says_so_once(plans, caplog) -> None:
    trt, cudart = sys.modules["tensorrt"], sys.modules["cuda.bindings.runtime"]
    trt.fail_capture = True
    with load(plans["generate"]) as plain, load(plans["generate"], cuda_graphs=True) as graphed:
        feeds = random_inputs(plain, 8)
        with caplog.at_level(logging.WARNING, logger="genrun"):
            for _ in range(3):
                got = graphed.run(**feeds)
        assert np.array_equal(got["pixels"], plain.run(**feeds)["pixels"])
        assert graphed.runner.graphs == {} and graphed.runner.ungraphed == {8}
    warnings = [r.message for r in caplog.records if "CUDA graph" in r.message]
    assert len(warnings) == 1 and "batch 8" in warnings[0]
    assert cudart.last_error == cudart.cudaError_t.cudaSuccess  # the capture's error cleared
    assert cudart.graphs == {}  # nothing of the failed capture left


def test_close_frees_everything_and_a_closed_engine_refuses_to_run(plans) -> None:
    trt, cudart = sys.modules["tensorrt"], sys.modules["cuda.bindings.runtime"]
    engine = load(plans["generate"], cuda_graphs=True)
    for batch in (8, 4):
        engine.run(**random_inputs(engine, batch))
    assert cudart.memory and cudart.streams and cudart.graphs and trt.contexts == 3
    engine.close()
    engine.close()  # twice is fine
    assert (cudart.memory, cudart.streams, cudart.graphs) == ({}, {}, {})
    assert trt.contexts == 0 and trt.engines == 0
    assert "was closed" in one_line(lambda: engine.run(**random_inputs(engine, 1)))
    with load(plans["density"].with_suffix(".onnx")) as onnx:
        session = onnx.session
    assert onnx.session is None and session is not None


def test_a_refused_input_shape_is_one_line(plans, monkeypatch) -> None:
    refuse = fake_gpu.IExecutionContext.set_input_shape
    monkeypatch.setattr(
        fake_gpu.IExecutionContext,
        "set_input_shape",
        lambda self, name, shape: shape[0] != 3 and refuse(self, name, shape),
    )
    with load(plans["generate"]) as engine:
        engine.run(**random_inputs(engine, 4))
        message = one_line(lambda: engine.run(**random_inputs(engine, 3)))
    assert "refused shape (3," in message and "batch 1..32" in message


def test_a_timing_cache_from_another_gpu_is_replaced(onnx_engines, tmp_path, monkeypatch, caplog):
    trt, _ = fake_gpu.install(monkeypatch)
    cache = tmp_path / "tensorrt.timing-cache"
    cache.write_bytes(fake_gpu.OTHER_GPU + b"old")
    with caplog.at_level(logging.WARNING, logger="genrun"):
        export_plans(onnx_engines["density"], tmp_path, options=PlanOptions(**OPTIONS))
    assert any("timed on another GPU" in r.message for r in caplog.records)
    assert cache.read_bytes() == b"+"  # a fresh cache, timed once
    trt.lose_timing_cache = True  # get_timing_cache returns None: the file stays as it was
    export_plans(onnx_engines["density"], tmp_path, options=PlanOptions(**OPTIONS))
    assert cache.read_bytes() == b"+"


def test_plan_refused_before_deserialising_when_built_elsewhere(plans) -> None:
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
    with load(plan) as engine:
        assert engine.plan.hardware_compat == "ampere+"  # any GPU >= 8.0
    assert trt.host_code_allowed is False  # an untrusted file runs no host code


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
    assert "pip install 'vaeflow[tensorrt-cu13]'" in one_line(lambda: load(plan))
    stubs_only = type(sys)("tensorrt")  # what tensorrt-stubs alone makes importable
    monkeypatch.setitem(sys.modules, "tensorrt", stubs_only)
    assert "needs the tensorrt package" in one_line(lambda: load(plan))
    fake_gpu.install(monkeypatch)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "pip install 'vaeflow[gpu-cu13]'" in one_line(lambda: load(plan))
    fake_gpu.install(monkeypatch, devices=0)
    assert "no CUDA GPU found" in one_line(lambda: load(plan))
    fake_gpu.install(monkeypatch, driver=0)
    assert "no NVIDIA driver found" in one_line(lambda: load(plan))
    fake_gpu.install(monkeypatch, driver=12080)  # a CUDA 12.8 driver, cuda-bindings 13
    message = one_line(lambda: load(plan))
    assert "driver is too old" in message and "CUDA 12.8" in message and "gpu-cu12" in message
    assert "only TensorRT runs" in one_line(lambda: load(plan, provider="cpu"))
    assert "does not exist" in one_line(lambda: load(plan.with_name("none.plan")))


def test_cli_without_tensorrt_is_one_line(glow_checkpoint, onnx_engines, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = GENEXPORT.run("tensorrt", glow_checkpoint, "--out", tmp_path)
    GENEXPORT.assert_one_line_error(result, "pip install 'vaeflow[tensorrt-cu13]'")
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
    source = tmp_path / "tiny.generate.onnx"
    shutil.copy(onnx_engines["generate"], source)
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


# --- ONNX Runtime's GPU providers -------------------------------------------


@pytest.fixture()
def onnx_engines(glow_exported) -> dict[str, Path]:
    return glow_exported


def test_onnxruntime_gpu_settings(onnx_engines, tmp_path) -> None:
    path = tmp_path / "e.onnx"
    cuda = ort_backend.provider_options("cuda", path, None)
    assert cuda["use_tf32"] == "0" and cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    manifest = read_from_onnx(onnx_engines["density"])
    options = ort_backend.provider_options("tensorrt", path, manifest)
    assert options["trt_engine_cache_path"] == str(tmp_path / "e.onnx.trt-cache")
    assert (tmp_path / "e.onnx.trt-cache").is_dir() and "trt_fp16_enable" not in options
    assert options["trt_profile_max_shapes"] == "images:4096x1x8x8"
    manifest.precision = "fp16"  # ONNX Runtime's TensorRT builds fp16 kernels only when told
    assert ort_backend.provider_options("tensorrt", path, manifest)["trt_fp16_enable"] == "True"


def test_io_binding_path_of_the_runner(onnx_engines) -> None:
    """The IO-binding path of the runner (GPU providers), here bound on the CPU."""
    with load(onnx_engines["density"], provider="cpu") as engine:
        bound = ort_backend.OnnxRuntimeRunner(
            engine.session, engine.path, "cpu", engine.manifest, io_binding=True
        )
        images = np.arange(3 * 64, dtype=np.uint8).reshape(3, 1, 8, 8)
        plain = engine.runner.run({"images": images})
        for name, value in bound.run({"images": images}).items():
            assert np.array_equal(value, plain[name])


@pytest.fixture()
def cuda_compiled_in(monkeypatch):
    """onnxruntime-gpu as it is on a machine without a GPU: the CUDA provider
    is compiled in and its library loads, but the session runs on the CPU
    (what onnxruntime-gpu 1.31.1 did here, by hand: it logged "Failed to create
    CUDAExecutionProvider" and ran on CPUExecutionProvider)."""
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort_backend.onnxruntime, "get_available_providers", lambda: offered)
    monkeypatch.setattr(nvidia, "missing_library", lambda path: None)
    monkeypatch.setattr(nvidia, "driver_cuda_version", lambda: None)


def test_a_cuda_session_that_runs_on_the_cpu_is_refused(onnx_engines, cuda_compiled_in) -> None:
    message = one_line(lambda: load(onnx_engines["generate"], provider="cuda"))
    assert message.startswith("the CUDA provider did not load (no NVIDIA driver")
    assert "--provider cpu" in message
    result = GENRUN.run("sample", "--engine", onnx_engines["generate"], "--provider", "cuda")
    GENRUN.assert_one_line_error(result, "the CUDA provider did not load")


def test_auto_says_what_actually_runs(onnx_engines, cuda_compiled_in, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="genrun"):
        engine = load(onnx_engines["generate"])
    assert engine.provider == "cpu"  # what the session runs, not what was compiled in
    (notice,) = [r.message for r in caplog.records]
    assert notice.startswith("auto: the CUDA provider did not load (no NVIDIA driver")
    assert notice.endswith("running on cpu")
    code, out, _ = GENRUN.run("info", "--engine", onnx_engines["generate"])
    assert code == 0 and re.search(r"provider\s+cpu", out), out


def test_a_missing_provider_library_is_named(onnx_engines, monkeypatch) -> None:
    offered = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort_backend.onnxruntime, "get_available_providers", lambda: offered)
    missing = {"tensorrt": "libnvinfer.so.10", "cuda": "libcudnn.so.9"}
    monkeypatch.setattr(
        nvidia, "missing_library", lambda path: next(v for k, v in missing.items() if k in path)
    )
    message = one_line(lambda: load(onnx_engines["generate"], provider="tensorrt"))
    assert "TensorRT not found: libnvinfer.so.10" in message and "tensorrt-cu" in message
    message = one_line(lambda: load(onnx_engines["generate"], provider="cuda"))
    assert "cuDNN 9 not found: libcudnn.so.9" in message and "vaeflow[gpu-cu" in message
    with load(onnx_engines["generate"]) as engine:  # auto skips what cannot load
        assert engine.provider == "cpu"


def test_tensorrt_provider_builds_float32_without_tf32(onnx_engines, tmp_path, monkeypatch):
    seen = {}
    engine = tmp_path / "tiny.generate.onnx"  # the provider's cache folder goes beside it
    shutil.copy(onnx_engines["generate"], engine)

    def session(*args, **kwargs):
        seen["override"] = ort_backend.os.environ.get("NVIDIA_TF32_OVERRIDE")
        raise RuntimeError("no TensorRT here")

    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    monkeypatch.setattr(ort_backend, "resolve_provider", lambda provider: "tensorrt")
    monkeypatch.setattr(ort_backend, "available_providers", lambda: ["tensorrt", "cpu"])
    monkeypatch.setattr(ort_backend, "create_session", session)
    with pytest.raises(UserError):
        load(engine, provider="tensorrt")
    assert seen["override"] == "0" and "NVIDIA_TF32_OVERRIDE" not in ort_backend.os.environ


def test_onnxruntime_and_onnxruntime_gpu_together_are_refused(monkeypatch) -> None:
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(ort_backend.importlib.metadata, "version", versions.__getitem__)
    ort_backend.check_one_onnxruntime.cache_clear()
    try:
        message = one_line(available_providers)
    finally:
        ort_backend.check_one_onnxruntime.cache_clear()
    assert "both onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message


# --- against the real NVIDIA packages (installed without a GPU) -------------


def test_every_cuda_call_of_the_runner_goes_through_the_real_bindings(built, tmp_path, monkeypatch):
    """The real cuda.bindings.runtime takes every call the runner makes, with
    its arguments (a TypeError or AttributeError fails here), and answers each
    with its no-driver error on this machine; the fake then stands in."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    _, cudart = fake_gpu.install(monkeypatch, checked=True)
    for path in built.iterdir():
        shutil.copy(path, tmp_path)
    plan = tmp_path / "tiny.generate.plan"
    with load(plan, cuda_graphs=True) as engine:
        for batch in (8, 4, 40):
            engine.run(**random_inputs(engine, batch))
    with load(plan) as engine:
        engine.run(**random_inputs(engine, 2))
    sys.modules["tensorrt"].fail_capture = True
    with load(plan, cuda_graphs=True) as engine:
        engine.run(**random_inputs(engine, 2))
    called = {name for name, _ in cudart.calls}
    assert called >= {
        "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaDriverGetVersion",
        "cudaStreamCreate", "cudaMalloc", "cudaMallocHost", "cudaMemcpyAsync",
        "cudaStreamSynchronize", "cudaStreamBeginCapture", "cudaStreamEndCapture",
        "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGetLastError", "cudaGraphExecDestroy",
        "cudaGraphDestroy", "cudaFree", "cudaFreeHost", "cudaStreamDestroy",
    }  # fmt: skip
    no_driver = {"cudaErrorInsufficientDriver", "cudaErrorNoDevice"}
    answered = {name: error.name for name, error in cudart.calls}
    succeeded = {n for n, e in answered.items() if e not in no_driver}
    assert succeeded <= {"cudaDriverGetVersion", "cudaRuntimeGetVersion"}, answered


def test_no_driver_is_the_users_one_line_with_the_real_bindings(plans, monkeypatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.delitem(sys.modules, name)  # the fakes: the real module from here on
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is not installed")
    message = one_line(lambda: load(plans["generate"]))
    assert message.startswith("no NVIDIA driver found (cudaErrorInsufficientDriver)")


def _stub_classes() -> dict[str, ast.ClassDef]:
    if not STUBS.is_file():
        pytest.skip(f"tensorrt-stubs not at {STUBS} (scripts/setup.sh installs them)")
    tree = ast.parse(STUBS.read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


FAKE_CLASSES = [
    "Dims",
    "INetworkDefinition", "ITensor", "OnnxParser", "IOptimizationProfile", "ITimingCache",
    "IBuilderConfig", "Builder", "ICudaEngine", "IExecutionContext", "Runtime", "Logger",
]  # fmt: skip
FAKE_ENUMS = [
    "TensorIOMode", "DataType", "NetworkDefinitionCreationFlag", "BuilderFlag", "MemoryPoolType",
    "HardwareCompatibilityLevel", "ExecutionContextAllocationStrategy",
]  # fmt: skip


def test_the_fake_tensorrt_has_the_stubs_names_signatures_and_enum_values() -> None:
    classes = _stub_classes()
    for name in FAKE_CLASSES:
        stub, fake = classes[name], getattr(fake_gpu, name)
        members = {}
        for node in stub.body:
            if isinstance(node, ast.FunctionDef):
                members.setdefault(node.name, []).append([a.arg for a in node.args.args])
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                members.setdefault(node.target.id, [])
        for attribute, value in vars(fake).items():
            if attribute == "SCRATCH_BYTES" or (
                attribute.startswith("_") and attribute != "__init__"
            ):
                continue
            if attribute == "__init__" and "__init__" not in members:
                continue  # made by TensorRT, never by its user: the fake's own constructor
            assert attribute in members, f"{name}.{attribute} is not TensorRT's"
            if callable(value) and members[attribute]:
                params = list(inspect.signature(value).parameters)
                assert params in members[attribute], (name, attribute, params, members[attribute])
    for name in FAKE_ENUMS:
        text = ast.get_source_segment(STUBS.read_text(), classes[name]) or ""
        real = dict(re.findall(rf"<{name}\.(\w+): (\d+)>", text))
        for member in getattr(fake_gpu, name):
            assert real.get(member.name) == str(member.value), (name, member.name)
    assert fake_gpu.NetworkDefinitionCreationFlag.STRONGLY_TYPED == 1


# --- on a GPU ----------------------------------------------------------------


def _need(provider: str) -> None:
    if provider not in available_providers():
        pytest.skip(f"no {provider} execution provider here (needs onnxruntime-gpu and a GPU)")


@pytest.mark.gpu
@pytest.mark.parametrize("role", ["generate", "density"])
def test_onnxruntime_cuda_matches_cpu(onnx_engines, role) -> None:
    _need("cuda")
    path = onnx_engines[role]
    with load(path, provider="cpu") as cpu, load(path, provider="cuda") as cuda:
        assert cuda.provider == "cuda" and cuda.settings["tf32"] == "off"
        bounds = cpu.manifest.parity[-1].tolerance
        cases = [Case(f"batch {b}", random_feeds(cpu.inputs, b, b)) for b in (1, 7, 64)]
        outputs = {s.name for s in cpu.outputs}
        check = compare(
            cpu.runner,
            cuda.runner,
            cases,
            {name: bound for name, bound in bounds.items() if name in outputs},
            precision="fp32",
            reference_name="onnxruntime-cpu",
            batch_sizes=[1, 7, 64],
        )
    assert not check.failures(), check.failures()


@pytest.mark.gpu
def test_sampling_on_cuda_equals_cpu_up_to_precision(onnx_engines) -> None:
    _need("cuda")
    path = onnx_engines["generate"]
    cpu = Sampler(load(path, provider="cpu")).sample(300, seed=3)
    cuda = Sampler(load(path, provider="cuda")).sample(300, seed=3)
    assert (np.abs(cpu.astype(int) - cuda).max()) <= 255 // 31 + 1  # one level at 5 bits


@pytest.mark.gpu
def test_real_tensorrt_plan_parity_and_graphs(glow_checkpoint, tmp_path) -> None:
    tensorrt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here")
    if getattr(tensorrt, "__version__", None) is None:
        pytest.skip("only tensorrt-stubs is installed here, not TensorRT")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed here")
    built = export_plans(glow_checkpoint, tmp_path, options=PlanOptions(**OPTIONS), name="tiny")
    assert all(not plan.parity.failures() for plan in built)
    path = tmp_path / "tiny.generate.plan"
    with load(path) as plain, load(path, cuda_graphs=True) as graphed:
        for batch in (8, 4, 8, 4, 32):
            feeds = random_inputs(plain, batch)
            want, got = plain.run(**feeds), graphed.run(**feeds)
            for name, value in want.items():
                assert np.array_equal(value, got[name]), (batch, name)
        feeds = random_inputs(plain, 8)
        graphed_outputs = graphed.run(**feeds)
    # Polygraphy as an independent runner of the same plan, where it is installed.
    polygraphy = pytest.importorskip("polygraphy", reason="polygraphy is not installed here")
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    assert polygraphy
    with TrtRunner(EngineFromBytes(BytesFromPath(str(path)))) as runner:
        theirs = runner.infer(feeds)
    for name, value in graphed_outputs.items():
        assert np.allclose(np.asarray(theirs[name]), value, atol=1e-5), name
