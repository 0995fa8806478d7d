"""The manifest inside engine files: an ONNX model's `metadata_props` entry
`vaeflow.manifest` (genrun/manifest.py is the schema; this module is where
it becomes JSON and back, `to_json`/`from_json`, with the checks of what is
read, and where it is read from and written into a file).

Reading needs neither `onnx` nor an ONNX Runtime session: `read_metadata`
walks the top level of the ModelProto (protobuf wire format) and reads only
its metadata_props, seeking past the graph and its weights. genrun's ONNX
Runtime loader learns what an engine is before it opens a session (the
TensorRT provider's profile needs the input shapes), genexport reads
manifests the same way, and a file that is not protobuf at all is refused
before any runtime parses it. A plan's manifest travels in its sidecar JSON
(genrun/backends/sidecar.py), parsed by the same `from_values`."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UserError
from .manifest import (
    BATCH,
    MANIFEST_VERSION,
    METADATA_KEY,
    READABLE_VERSIONS,
    Manifest,
)
from .typed_json import Malformed, parse, refusal

# ModelProto's field numbers (onnx.proto): metadata_props, and the
# StringStringEntryProto's key and value.
METADATA_PROPS, KEY, VALUE = 14, 1, 2
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
MAX_ENTRY_BYTES = 64 << 20  # a metadata entry larger than this is not ours


class _Malformed(Exception):
    """Not protobuf as ONNX writes it: what was found where."""


def to_values(manifest: Manifest) -> dict[str, Any]:
    """The manifest as a JSON object's values."""
    values = asdict(manifest)
    # Absent, a manifest stays version 3's (precision_plan: bf16 engines only,
    # which no reader without the OpenVINO backend can run anyway).
    for key in ("classes", "provenance", "precision_plan"):
        if values[key] is None:
            del values[key]
    return values


def to_json(manifest: Manifest) -> str:
    return json.dumps(to_values(manifest), indent=1, sort_keys=True)


def from_json(text: str, source: str = "the manifest") -> Manifest:
    """Parse and validate; invalid JSON, an unknown version or a malformed
    value is a UserError."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{source} is not valid JSON ({err}); re-export the engine") from None
    return from_values(values, source)


def from_values(values: Any, source: str = "the manifest") -> Manifest:
    """A manifest from parsed JSON (an ONNX file's entry, a plan's sidecar)."""
    if not isinstance(values, dict):
        raise UserError(f"{source} is not a vaeflow engine manifest; re-export the engine")
    version = values.get("version")
    if version not in READABLE_VERSIONS:
        raise UserError(
            f"{source} has engine manifest version {version!r}, this vaeflow reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; re-export the engine with this "
            "vaeflow's `genexport onnx` or use the vaeflow release that wrote it"
        )
    expected = ", ".join(f.name for f in fields(Manifest))
    fix = f"re-export the engine (a version {MANIFEST_VERSION} manifest has: {expected})"
    malformed = f"{source} holds a malformed manifest"
    manifest = parse(Manifest, values, malformed, fix)
    try:  # what types alone do not say
        _check_values(manifest)
    except Malformed as err:
        raise refusal(malformed, err, fix) from None
    return manifest


DTYPES = ("float32", "float16", "uint8", "int64")


def _check_values(manifest: Manifest) -> None:
    """What types alone do not say: sizes are positive, the batch axis is "N",
    dtypes are ones the runtime feeds (a Malformed naming the field)."""

    def sizes(where: str, shape: list, batch: bool = False) -> None:
        for i, size in enumerate(shape):
            ok = size == BATCH if isinstance(size, str) else size >= 1
            if not ok or (isinstance(size, str) and not batch):
                raise Malformed(f"{where}[{i}] = {size!r} is not a size >= 1")

    for group in ("inputs", "outputs"):
        for spec in getattr(manifest, group):
            where = f"{group}[{spec.name}]"
            if spec.dtype not in DTYPES:
                raise Malformed(f"{where}.dtype = {spec.dtype!r:.30} is not one of {DTYPES}")
            sizes(f"{where}.shape", spec.shape, batch=True)
    if len(manifest.data_shape) != 3:
        raise Malformed(f"data_shape = {manifest.data_shape} is not [C, H, W]")
    sizes("data_shape", manifest.data_shape)
    for i, shape in enumerate(manifest.latent_shapes):
        if not shape:
            raise Malformed(f"latent_shapes[{i}] is empty")
        sizes(f"latent_shapes[{i}]", shape)
    digest = manifest.graph_sha256
    if digest is not None and not re.fullmatch("[0-9a-f]{64}", digest):
        raise Malformed(f"graph_sha256 = {digest!r:.30} is not 64 hex digits")
    if manifest.classes is not None:
        indices = [c.index for c in manifest.classes]
        names = [c.name for c in manifest.classes if c.name is not None]
        if len(indices) < 2 or indices != list(range(len(indices))):
            raise Malformed(f"classes must be indices 0..K-1, K >= 2, got {indices[:10]}")
        if len(set(names)) != len(names):
            raise Malformed("classes has a name twice")


def read_from_onnx(path: str | Path) -> Manifest:
    """The manifest of an engine file; a missing file, a file that is not an
    ONNX model and one without a manifest are each a one-line UserError."""
    path = Path(path)
    manifest = manifest_in(path)
    if manifest is None:
        raise UserError(
            f"{path} holds no vaeflow manifest (metadata key {METADATA_KEY!r}); "
            "export the engine with `genexport onnx`"
        )
    return manifest


class NotOnnx(UserError):
    """A file that is not protobuf as ONNX writes it (genrun's ONNX loader
    lets ONNX Runtime's own refusal speak first)."""


def manifest_in(path: Path, verify_graph: bool = False) -> Manifest | None:
    """The manifest of an ONNX file, or None for a graph without one; a file
    that is not protobuf as ONNX writes it is a NotOnnx. `verify_graph`: also
    refuse a file whose graph is not the one the manifest records (changed
    since export; manifests before version 3 record none)."""
    if not path.is_file():
        raise UserError(f"engine {path} does not exist; export one with `genexport onnx CKPT`")
    try:
        with open(path, "rb") as handle:
            props = read_metadata(handle)
    except (_Malformed, OSError) as err:
        raise NotOnnx(
            f"{path} is not an ONNX model ({err}); pass an engine written by `genexport onnx`"
        ) from None
    if METADATA_KEY not in props:
        return None
    manifest = from_json(props[METADATA_KEY], source=str(path))
    if verify_graph:
        _check_graph_sha256(path, manifest)
    return manifest


def read_metadata(handle: BinaryIO) -> dict[str, str]:
    """The metadata_props of a serialised ModelProto read from `handle`: every
    top-level field is skipped by its length except metadata_props."""
    props: dict[str, str] = {}
    for field, _, payload, end in _top_level_fields(handle):
        if field == METADATA_PROPS:
            if end - payload > MAX_ENTRY_BYTES:
                raise _Malformed(f"a metadata entry of {end - payload} bytes")
            key, value = _entry(handle.read(end - payload))
            props[key] = value
    return props


def graph_sha256(handle: BinaryIO) -> str:
    """sha256 of a serialised ModelProto without its metadata_props: the
    graph, its weights and opsets, everything but the metadata, where the
    manifest that records this digest lives. The same on the bytes genexport
    writes and on the file read back; any byte changed outside the metadata
    changes it."""
    digest = hashlib.sha256()
    for field, start, _, end in _top_level_fields(handle):
        if field != METADATA_PROPS:
            handle.seek(start)
            for offset in range(start, end, 1 << 20):
                digest.update(handle.read(min(1 << 20, end - offset)))
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """hex sha256 of a whole file (the checkpoint a manifest records, a plan
    and its ONNX graph a sidecar records)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_graph_sha256(path: Path, manifest: Manifest) -> None:
    """A UserError unless the file's graph is the one genexport recorded in
    `manifest` (manifests from before version 3 record none: nothing to check)."""
    if manifest.graph_sha256 is None:
        return
    try:
        with open(path, "rb") as handle:
            actual = graph_sha256(handle)
    except (_Malformed, OSError) as err:
        raise UserError(f"{path} cannot be read whole ({err}); copy the engine again") from None
    if actual != manifest.graph_sha256:
        raise UserError(
            f"{path} does not hold the graph its manifest records (sha256 {actual[:12]}..., "
            f"exported {manifest.graph_sha256[:12]}...): it changed after export; "
            "re-export it with `genexport onnx` or copy the original again"
        )


def _top_level_fields(handle: BinaryIO) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start, payload start, end) of each top-level field of the
    serialised ModelProto in `handle`, in file order; after each, the handle
    is moved to the field's end whatever the caller read."""
    size = handle.seek(0, 2)
    handle.seek(0)
    while handle.tell() < size:
        start = handle.tell()
        field, kind = _tag(handle)
        if kind == VARINT:
            _varint(handle)
        elif kind in (FIXED64, FIXED32):
            handle.seek(8 if kind == FIXED64 else 4, 1)
        elif kind == LENGTH_DELIMITED:
            length = _varint(handle)
            if handle.tell() + length > size:
                raise _Malformed(f"field {field} runs {length} bytes past the end of the file")
            handle.seek(length, 1)
        else:
            raise _Malformed(f"wire type {kind} at byte {handle.tell()}")
        end = handle.tell()
        payload = end - length if kind == LENGTH_DELIMITED else end
        handle.seek(payload)
        yield field, start, payload, end
        handle.seek(end)
    if handle.tell() != size:
        raise _Malformed("the last field runs past the end of the file")


def write_to_onnx(model_proto: Any, manifest: Manifest) -> None:
    """Store `manifest` in an onnx.ModelProto's metadata_props (replacing any)."""
    props = model_proto.metadata_props
    kept = [(p.key, p.value) for p in props if p.key != METADATA_KEY]
    del props[:]
    for key, value in [*kept, (METADATA_KEY, to_json(manifest))]:
        entry = props.add()
        entry.key, entry.value = key, value


def _entry(data: bytes) -> tuple[str, str]:
    """(key, value) of a StringStringEntryProto."""
    stream, values = io.BytesIO(data), {KEY: "", VALUE: ""}
    while stream.tell() < len(data):
        field, kind = _tag(stream)
        if kind != LENGTH_DELIMITED:
            raise _Malformed(f"a metadata entry holds wire type {kind}")
        length = _varint(stream)
        chunk = stream.read(length)
        if len(chunk) != length:
            raise _Malformed("a metadata entry is cut short")
        if field in values:
            try:
                values[field] = chunk.decode()
            except UnicodeDecodeError:
                raise _Malformed("a metadata entry is not UTF-8") from None
    return values[KEY], values[VALUE]


def _tag(handle: BinaryIO) -> tuple[int, int]:
    tag = _varint(handle)
    if tag >> 3 == 0:
        raise _Malformed(f"field number 0 at byte {handle.tell()}")
    return tag >> 3, tag & 7


def _varint(handle: BinaryIO) -> int:
    value = 0
    for shift in range(0, 70, 7):
        byte = handle.read(1)
        if not byte:
            raise _Malformed("the file ends inside a number")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise _Malformed("a number longer than 10 bytes")
