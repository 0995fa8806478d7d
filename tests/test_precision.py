"""bf16 engines (genexport onnx --precision bf16, genrun's OpenVINO backend):
the user-terms parity figures and the plan stored in the manifest, the
runtime path, the refusal that writes nothing, and the one-line messages of
a machine that cannot run them. Tiny models on the embedded digits."""

from __future__ import annotations

import numpy as np
import pytest

from genrun.backends import openvino as ov_backend
from genrun.errors import UserError

try:
    import openvino  # noqa: F401

    RUNS_BF16 = ov_backend.bf16_support() is None
    WHY = ov_backend.bf16_support() or ""
except ImportError:
    RUNS_BF16, WHY = False, "openvino is not installed (pip install 'vaeflow[openvino]')"
needs_bf16 = pytest.mark.skipif(not RUNS_BF16, reason=f"bf16 engines cannot run here: {WHY}")


@pytest.fixture(scope="module")
def vae_bf16(vae_checkpoint, tmp_path_factory):
    from genexport.export import export_checkpoint

    out = tmp_path_factory.mktemp("vae-bf16")
    # Tiny models are slower in bf16 than in fp32 (casts, OpenVINO's call
    # cost): the speed check is tested on its own below.
    (engine,) = export_checkpoint(
        vae_checkpoint, out, "decode", precision="bf16", name="tiny", bf16_min_speedup=0
    )
    fp32 = export_checkpoint(vae_checkpoint, out, "decode", name="tiny")[0]
    return engine.path, fp32.path


def test_no_bf16_instructions_is_one_line_naming_the_flags() -> None:
    why = ov_backend.bf16_support({"avx512f", "avx512_vnni", "sse2"})
    assert "amx_bf16" in why and "avx512_bf16" in why and "avx512_vnni" in why
    assert "\n" not in why
    assert ov_backend.bf16_support({"avx512_bf16"}) is None
    assert ov_backend.bf16_support({"amx_bf16", "amx_tile"}) is None


def test_a_bf16_engine_on_a_cpu_without_bf16_is_refused_in_one_line(
    glow_exported, tmp_path, monkeypatch
) -> None:
    """The same graph with a bf16 manifest goes to the OpenVINO backend, which
    refuses a CPU without bfloat16 instructions before importing anything."""
    import onnx

    from genrun import load
    from genrun.manifest_io import read_from_onnx, write_to_onnx

    manifest = read_from_onnx(glow_exported["generate"])
    manifest.precision = "bf16"
    model = onnx.load(str(glow_exported["generate"]))
    write_to_onnx(model, manifest)
    engine = tmp_path / "tiny.generate.bf16.onnx"
    engine.write_bytes(model.SerializeToString())
    monkeypatch.setattr(ov_backend, "cpu_flags", lambda: {"avx2", "avx512f"})
    with pytest.raises(UserError, match=r"is a bf16 engine and this CPU has no bfloat16") as err:
        load(engine)
    assert "float32 engine" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="runs on the CPU; use --provider cpu"):
        load(engine, provider="cuda")


def test_fp32_engines_are_not_taken_for_bf16(glow_exported) -> None:
    from genrun import load

    assert {load(path).backend for path in glow_exported.values()} == {"onnxruntime"}


@needs_bf16
def test_bf16_export_stores_user_terms_figures_and_plan(vae_bf16) -> None:
    from genrun.manifest_io import read_from_onnx

    bf16, _ = vae_bf16
    assert bf16.name == "tiny.decode.bf16.onnx"
    manifest = read_from_onnx(bf16)
    assert manifest.precision == "bf16"
    fp32_check, bf16_check = manifest.parity
    assert fp32_check.precision == "fp32" and not fp32_check.failures()
    assert bf16_check.precision == "bf16" and bf16_check.reference == "onnx-float32"
    for t in ("0.7", "1"):
        assert bf16_check.tolerance[f"pixels_beyond_one_level_share@T={t}"] == 0.001
        assert bf16_check.tolerance[f"images_nonfinite@T={t}"] == 0.0
    assert not bf16_check.failures()
    plan = manifest.precision_plan
    assert plan.runtime == "openvino" and plan.reduced_layers
    assert 0.5 <= plan.reduced_flop_share <= 1.0
    assert plan.speedup is not None and plan.speedup > 0  # measured at export, stored


@needs_bf16
def test_a_bf16_engine_slower_than_fp32_is_not_written(vae_checkpoint, tmp_path) -> None:
    """Nothing silently slower than fp32: an engine that meets parity but runs
    under --bf16-min-speedup times the fp32 engine's speed is one line, and
    nothing is written."""
    from genexport.export import export_checkpoint

    with pytest.raises(UserError, match="meets parity but runs at") as err:
        export_checkpoint(
            vae_checkpoint, tmp_path, "decode", precision="bf16", bf16_min_speedup=1e6
        )
    message = str(err.value)
    assert "x the fp32 engine's speed on this CPU" in message and "AMX" in message
    assert "--precision fp32" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@needs_bf16
def test_bf16_engine_runs_on_openvino_within_one_level_of_fp32(vae_bf16) -> None:
    from genrun import load

    bf16_path, fp32_path = vae_bf16
    bf16, fp32 = load(bf16_path), load(fp32_path)
    assert bf16.backend == "openvino" and fp32.backend == "onnxruntime"
    z = np.random.default_rng(1).standard_normal((300, 4)).astype(np.float32)
    got, want = bf16.run(z=z), fp32.run(z=z)
    assert got["pixels"].dtype == np.uint8 and np.isfinite(got["images"]).all()
    off = np.abs(got["pixels"].astype(int) - want["pixels"].astype(int)) > 1
    assert off.mean() <= 0.001
    # The graph computes in bfloat16 where the plan says: not the float32 numbers.
    assert not np.array_equal(got["images"], want["images"])


@needs_bf16
def test_bf16_density_checks_bits_per_dim_and_auroc(glow_checkpoint, tmp_path) -> None:
    from genexport.export import export_checkpoint
    from genrun.manifest_io import read_from_onnx

    (engine,) = export_checkpoint(
        glow_checkpoint, tmp_path, "density", precision="bf16", bf16_min_speedup=0
    )
    check = read_from_onnx(engine.path).parity[-1]
    assert check.tolerance["bits_per_dim_max_abs_error@test"] == 0.01
    assert {"noise", "inverted", "black", "grey"} == {
        key.split("@")[1] for key in check.tolerance if key.startswith("typicality_auroc")
    }
    assert all(v == 0.005 for k, v in check.tolerance.items() if k.startswith("typicality"))
    assert not check.failures()


@needs_bf16
def test_unmeetable_parity_writes_nothing_and_names_the_layers(
    glow_checkpoint, tmp_path, monkeypatch
) -> None:
    from genexport import precision
    from genexport.export import export_checkpoint

    monkeypatch.setattr(precision, "BPD_BOUND", 1e-9)  # tighter than bfloat16 can be
    with pytest.raises(UserError, match="bf16 parity cannot be met for the density graph") as err:
        export_checkpoint(glow_checkpoint, tmp_path, "density", precision="bf16")
    message = str(err.value)
    assert "nothing written" in message and "layers over a bound alone: " in message
    assert "bits_per_dim_max_abs_error@test" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@needs_bf16
def test_bf16_of_a_role_it_cannot_judge_is_one_line(vae_checkpoint, tmp_path) -> None:
    from genexport.export import export_checkpoint

    with pytest.raises(UserError, match="--precision bf16 exports generate, decode, density"):
        export_checkpoint(vae_checkpoint, tmp_path, "encode", precision="bf16")
    assert list(tmp_path.iterdir()) == []


@needs_bf16
def test_verify_reruns_the_user_terms_figures(vae_bf16, vae_checkpoint) -> None:
    from genexport.export import verify_engine

    manifest, check = verify_engine(vae_bf16[0], vae_checkpoint)
    assert check.precision == "bf16" and not check.failures()
    assert check.tolerance == manifest.parity[-1].tolerance


@pytest.mark.parametrize("cond", [None, 4])
def test_fused_coupling_and_prior_are_the_trained_maps(cond) -> None:
    """The export forms (fused_coupling.py) against the trained layers, both
    directions, outputs and log-dets, with non-trivial weights and the floor."""
    import torch

    from genexport.graphs.fused_coupling import FusedCoupling, FusedPrior
    from gentrain.models.glow.layers import AffineCoupling, GaussianStandardize

    torch.manual_seed(0)
    trained = [AffineCoupling(4, 16).eval(), GaussianStandardize(2, cond, (6, 6)).eval()]
    for layer in trained:
        for parameter in layer.parameters():
            parameter.data.normal_(0, 0.3)
    fused = [FusedCoupling(trained[0]), FusedPrior(trained[1])]
    inputs = [torch.randn(5, 4, 6, 6), torch.randn(5, 2 + (cond or 0), 6, 6)]
    with torch.no_grad():
        for old, new, x in zip(trained, fused, inputs, strict=True):
            for direction in ("forward", "inverse"):
                (y0, l0), (y1, l1) = getattr(old, direction)(x), getattr(new, direction)(x)
                assert torch.allclose(y0, y1, atol=1e-4, rtol=1e-4)
                assert torch.allclose(l0, l1, atol=1e-3, rtol=1e-5)


def test_a_region_that_misses_narrowly_is_retried_layer_by_layer() -> None:
    """The layer search on made-up harms (additive, bound 1): region A misses
    alone by 1.3x through its first layer, region C by 3x (not worth a
    screening per layer); B passes. Regions alone leave 40 of 240 FLOPs in
    bfloat16; A's second layer (90 FLOPs) passes without its first."""
    from genexport.precision import Region, choose_regions

    harm = {"a1": 1.2, "a2": 0.1, "b1": 0.5, "c1": 1.5, "c2": 1.5}
    regions = [
        Region("a1", ["a1", "a2"], 100),
        Region("b1", ["b1"], 40),
        Region("c1", ["c1", "c2"], 100),
    ]
    measured: list[set[str]] = []

    def measure(chosen, screen=False):
        nodes = {n for r in chosen for n in r.nodes}
        measured.append(nodes)
        return None, {"x": sum(harm[n] for n in nodes)}

    effects: dict[str, float] = {}
    flops = {"a1": 10, "a2": 90, "b1": 40, "c1": 50, "c2": 50}
    regions, chosen, best = choose_regions(regions, measure, {"x": 1.0}, effects, lambda: flops)
    assert {r.name for r in chosen} == {"a2", "b1"}
    assert best is not None and best[1]["x"] == pytest.approx(0.6)
    assert sorted(r.name for r in regions) == ["a1", "a2", "b1", "c1"]  # C kept whole
    assert {"c2"} not in measured  # C's layers were never screened alone
    assert effects["a1"] == pytest.approx(1.2)  # the layer's, not the region's 1.3
