"""The engine manifest: JSON round trip, storage inside an ONNX file read back
by genrun's own reader (genrun/manifest_io.py, no onnx or session needed)
and seen the same by onnx and onnxruntime, and refusal of unknown versions,
files without one and files that are not protobuf. Torch-free, like genrun."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from genrun.errors import UserError
from genrun.manifest import (
    MANIFEST_VERSION,
    METADATA_KEY,
    CheckpointInfo,
    ExportInfo,
    Manifest,
    Parity,
    PixelMapping,
    TensorSpec,
)
from genrun.manifest_io import from_json, read_from_onnx, to_json, write_to_onnx


def _manifest() -> Manifest:
    return Manifest(
        family="glow",
        role="density",
        precision="fp32",
        inputs=[
            TensorSpec("images", "uint8", ["N", 1, 8, 8], "images to score"),
            TensorSpec("offset", "float32", ["N", 1, 8, 8], "dequantisation", default=0.5),
        ],
        outputs=[TensorSpec("bits_per_dim", "float32", ["N"], "bits/dim")],
        data_shape=[1, 8, 8],
        latent_shapes=[[2, 4, 4], [8, 2, 2]],
        pixels=PixelMapping(8, [-0.5, 0.5], "y = ...", "x = ...", 354.9),
        temperature=None,
        checkpoint=CheckpointInfo(
            "checkpoint.pt", "ab" * 32, 20, {"bpd": 1.25}, {"levels": 2}, {"spec": "digits"}
        ),
        parity=[
            Parity(
                "fp32",
                "pytorch-float32",
                [1, 7, 64],
                {"bits_per_dim": 1e-6},
                {"bits_per_dim": 1e-4},
            )
        ],
        export=ExportInfo("torch.onnx dynamo", 18, 153, 165, 153, {"torch": "2.13.0"}),
    )


def _tiny_onnx() -> onnx.ModelProto:
    """y = relu(x): a model to carry the manifest."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_json_round_trip_keeps_every_field() -> None:
    manifest = _manifest()
    back = from_json(to_json(manifest))
    assert back == manifest
    assert back.version == MANIFEST_VERSION
    assert back.input("offset").default == 0.5
    assert {s.name: s.shape for s in back.outputs}["bits_per_dim"] == ["N"]


def test_stored_in_onnx_and_read_back_as_onnx_and_onnxruntime_see_it(tmp_path) -> None:
    model = _tiny_onnx()
    model.metadata_props.add(key="author", value="someone else")  # kept, and skipped on reading
    write_to_onnx(model, _manifest())
    write_to_onnx(model, _manifest())  # replaces, never duplicates
    assert [p.key for p in model.metadata_props] == ["author", METADATA_KEY]
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    assert read_from_onnx(path) == _manifest()
    by_onnx = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert from_json(by_onnx[METADATA_KEY]) == _manifest()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY]) == _manifest()
    (y,) = session.run(None, {"x": np.array([[-1.0, 2.0]], np.float32)})
    assert y.tolist() == [[0.0, 2.0]]


def test_unknown_version_is_refused_with_the_fix() -> None:
    values = json.loads(to_json(_manifest()))
    values["version"] = 99
    with pytest.raises(UserError, match=r"version 99.*reads versions 1, 2.*re-export"):
        from_json(json.dumps(values))


def test_malformed_manifests_are_one_line_errors() -> None:
    values = json.loads(to_json(_manifest()))
    del values["pixels"]
    with pytest.raises(UserError, match=r"malformed.*pixels"):
        from_json(json.dumps(values))
    with pytest.raises(UserError, match="not valid JSON"):
        from_json("{")
    with pytest.raises(UserError, match="not a vaeflow engine manifest"):
        from_json("[1, 2]")


def test_a_manifest_that_does_not_describe_its_graph_is_refused_at_load(tmp_path) -> None:
    """genrun.engine holds the manifest to the graph the runtime reports:
    dtypes, ranks, fixed sizes, and every input without a default present."""
    from genrun import load

    x = TensorSpec("x", "float32", ["N", 2], "input")
    fits = replace(_manifest(), inputs=[x], outputs=[TensorSpec("y", "float32", ["N", 2], "y")])
    cases = {
        "fits": fits,
        "is uint8": replace(fits, inputs=[replace(x, dtype="uint8")]),
        "is float32 \\['N', 3\\]": replace(fits, inputs=[replace(x, shape=["N", 3])]),
        "do not match": replace(fits, inputs=[x, TensorSpec("z", "float32", ["N"], "z")]),
        "graph input 'x' is not in its manifest": replace(
            fits, inputs=[TensorSpec("z", "float32", ["N"], "z", default=0.0)]
        ),
    }
    for expected, manifest in cases.items():
        model = _tiny_onnx()
        write_to_onnx(model, manifest)
        engine = tmp_path / "tiny.density.onnx"
        engine.write_bytes(model.SerializeToString())
        if expected == "fits":
            got = load(engine, provider="cpu").run(x=np.array([[-1.0, 2.0]]))["y"]
            assert got.tolist() == [[0.0, 2.0]]
            continue
        with pytest.raises(UserError, match=expected) as caught:
            load(engine, provider="cpu")
        assert "re-export the engine" in str(caught.value) and "\n" not in str(caught.value)


def test_files_without_a_manifest_are_refused(tmp_path) -> None:
    bare = tmp_path / "bare.onnx"
    onnx.save(_tiny_onnx(), str(bare))
    with pytest.raises(UserError, match="holds no vaeflow manifest"):
        read_from_onnx(bare)
    with pytest.raises(UserError, match="does not exist"):
        read_from_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx")
    with pytest.raises(UserError, match="not an ONNX model"):
        read_from_onnx(junk)
    model = _tiny_onnx()
    write_to_onnx(model, _manifest())
    whole = model.SerializeToString()
    for cut in (len(whole) - 1, len(whole) // 2, 3):  # a file cut short anywhere
        junk.write_bytes(whole[:cut])
        with pytest.raises(UserError, match="not an ONNX model") as caught:
            read_from_onnx(junk)
        assert "\n" not in str(caught.value)


def test_parity_failures_name_each_value_over_its_bound() -> None:
    check = Parity(
        "fp32",
        "pytorch-float32",
        [1],
        {"a": 1e-5, "b": 2e-3, "c": float("nan")},
        dict.fromkeys("abc", 1e-4),
    )
    assert [f.split()[0] for f in check.failures()] == ["b", "c"]
