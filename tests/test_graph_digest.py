"""The graph digest (manifest version 3): genexport records the sha256 of an
engine's bytes outside its metadata, genrun's ONNX loader refuses a file whose
graph changed since (weights overwritten, a truncated copy) in one line, and
engines from before the digest still load."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import onnx
import pytest
from cli_helpers import InProcessCli

from genrun.cli import main
from genrun.engine import load
from genrun.errors import UserError
from genrun.manifest import METADATA_KEY
from genrun.manifest_io import from_json, graph_sha256, read_from_onnx, to_json, write_to_onnx

CLI = InProcessCli(main, "genrun")


def _digest(model: onnx.ModelProto) -> str:
    return graph_sha256(io.BytesIO(model.SerializeToString()))


def _largest_weights(model: onnx.ModelProto) -> bytes:
    return max((t.raw_data for t in model.graph.initializer), key=len)


def test_the_digest_covers_every_byte_but_the_metadata(glow_exported) -> None:
    model = onnx.load(str(glow_exported["generate"]))
    manifest = read_from_onnx(glow_exported["generate"])
    assert manifest.graph_sha256 == _digest(model)
    with open(glow_exported["generate"], "rb") as handle:
        assert graph_sha256(handle) == manifest.graph_sha256  # the file read back
    manifest.checkpoint.step += 1  # another manifest: same graph, same digest
    write_to_onnx(model, manifest)
    model.metadata_props.add(key="note", value="added later")
    assert _digest(model) == manifest.graph_sha256
    model.graph.initializer[0].raw_data = b"\0" * len(model.graph.initializer[0].raw_data)
    assert _digest(model) != manifest.graph_sha256
    model = onnx.load(str(glow_exported["generate"]))
    model.graph.node[0].name += "x"
    assert _digest(model) != manifest.graph_sha256


def test_random_bytes_in_the_weights_are_refused_in_one_line(glow_exported, tmp_path) -> None:
    """The issue's case: random bytes written into the weights of an engine
    loaded and ran (exit 0). Now `genrun sample` exits 2 naming the fix."""
    engine = tmp_path / "glow.generate.onnx"
    shutil.copy(glow_exported["generate"], engine)
    data = bytearray(engine.read_bytes())
    weights = _largest_weights(onnx.load(str(engine)))
    assert len(weights) >= 64 and data.count(weights) == 1
    at = data.find(weights) + len(weights) // 2
    data[at : at + 16] = np.random.default_rng(0).integers(0, 256, 16, np.uint8).tobytes()
    engine.write_bytes(bytes(data))
    result = CLI.run("sample", "--engine", engine, "--n", 4, "--out", tmp_path / "s.npz")
    CLI.assert_one_line_error(result, "does not hold the graph its manifest records")
    assert "re-export it with `genexport onnx`" in result[2]
    assert not (tmp_path / "s.npz").exists()
    with pytest.raises(UserError, match="changed after export"):
        load(engine)


def test_engines_without_a_digest_still_load(glow_exported, tmp_path) -> None:
    """A version 2 manifest (no graph_sha256), as every engine exported before
    it carries: loaded and run unchecked; a malformed digest is refused."""
    model = onnx.load(str(glow_exported["density"]))
    values = json.loads(to_json(read_from_onnx(glow_exported["density"])))
    del values["graph_sha256"]
    old = from_json(json.dumps({**values, "version": 2}))
    assert old.version == 2 and old.graph_sha256 is None
    write_to_onnx(model, old)
    engine = tmp_path / "old.density.onnx"
    engine.write_bytes(model.SerializeToString())
    images = np.zeros((2, 1, 8, 8), np.uint8)
    assert load(engine).run(images=images)["bits_per_dim"].shape == (2,)
    bad = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    bad.value = json.dumps({**values, "version": 3, "graph_sha256": "not hex"})
    engine.write_bytes(model.SerializeToString())
    with pytest.raises(UserError, match="graph_sha256 = 'not hex' is not 64 hex digits"):
        load(engine)
