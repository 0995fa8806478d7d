"""The engines that ship with the runtime (genrun/builtin), so `pip install
vaeflow` has something to run without torch or training:

    genrun sample --engine builtin:mnist-glow --label 7 --n 64 --out sevens.png
    genrun likelihood --engine builtin:mnist-glow --data mnist:DIR
    genrun classify --engine builtin:mnist-glow --data mnist:DIR
    genrun models                       # what ships, its size and measured quality

`builtin:NAME` names a model; each command takes the file of the role it
needs (sampling NAME.generate.onnx, scoring and classifying
NAME.marginal.onnx or NAME.density.onnx). In Python,
`genrun.load("builtin:NAME.generate")` (`load` below: genrun.engine.load for
any path, resolving builtin: first; the engine module itself knows nothing of
builtin engines, which keeps it out of an import circle). Each engine's manifest records how it
was made (`provenance`: scripts/builtin_engines.sh's exact commands, the data
and its licence, the measured results); genrun/builtin/README.md says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import engine as engine_module
from .describe import file_size
from .errors import UserError
from .manifest import DENSITY, GENERATE, Manifest

BUILTIN_DIR = Path(__file__).parent / "builtin"
PREFIX = "builtin:"
# The file a role is served from, in order of preference.
FILES = {GENERATE: ("generate",), DENSITY: ("marginal", "density")}


@dataclass
class BuiltinEngine:
    name: str  # the model: builtin:NAME
    graph: str  # generate, marginal or density
    path: Path
    manifest: Manifest

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def is_builtin(engine: str | Path) -> bool:
    return str(engine).startswith(PREFIX)


def names() -> list[str]:
    """The shipped models, by name."""
    return sorted({path.name.split(".")[0] for path in BUILTIN_DIR.glob("*.onnx")})


def resolve(engine: str | Path, role: str | None = None) -> Path:
    """`builtin:NAME` (or `builtin:NAME.GRAPH`) -> the shipped file that
    serves `role` ("generate" or "density"); any other path as it is."""
    if not is_builtin(engine):
        return Path(engine)
    name, _, graph = str(engine)[len(PREFIX) :].partition(".")
    if name not in names():
        shipped = ", ".join(f"{PREFIX}{n}" for n in names()) or "none"
        raise UserError(f"no builtin engine {name!r}; the runtime ships: {shipped} (genrun models)")
    graphs = [graph] if graph else list(FILES.get(role or "", ()))
    for candidate in graphs:
        path = BUILTIN_DIR / f"{name}.{candidate}.onnx"
        if path.is_file():
            return path
    have = [p.name.split(".")[1] for p in sorted(BUILTIN_DIR.glob(f"{name}.*.onnx"))]
    choices = ", ".join(f"{PREFIX}{name}.{g}" for g in have)
    if not graph and role is None:
        raise UserError(f"{PREFIX}{name} names a model; load one of its engines: {choices}")
    want = f"'{graph}'" if graph else f"a {role} engine"
    raise UserError(f"{PREFIX}{name} has no {want}; it ships: {choices}")


def load(path: str | Path, *args: Any, **options: Any) -> engine_module.Engine:
    """`genrun.load`: `genrun.engine.load` of `path`, where `builtin:NAME.GRAPH`
    is the shipped file."""
    return engine_module.load(resolve(path), *args, **options)


def engines() -> list[BuiltinEngine]:
    """Every shipped engine file with its manifest, by model then graph."""
    found = []
    for path in sorted(BUILTIN_DIR.glob("*.onnx")):
        name, graph = path.name.split(".")[:2]
        manifest = engine_module.load(path, "cpu", threads=1).manifest
        found.append(BuiltinEngine(name, graph, path, manifest))
    return found


def builtin_table() -> list[str]:
    """`genrun models`: each shipped model with its files and sizes, what it
    was trained on and what it measures."""
    shipped = engines()
    if not shipped:
        return ["no builtin engines in this installation"]
    lines = []
    for name in dict.fromkeys(e.name for e in shipped):
        files = [e for e in shipped if e.name == name]
        first = files[0].manifest
        classes = f", {len(first.classes)} classes" if first.classes else ""
        size = sum(e.size for e in files)
        lines.append(
            f"{PREFIX}{name}  {first.family}, images {first.data_shape}{classes}, "
            f"{file_size(size)} in all"
        )
        lines += [f"  {e.path.name:<28} {file_size(e.size):>8}  {e.manifest.role}" for e in files]
        made = first.provenance
        if made is not None:
            results = ", ".join(f"{k} {v:.4g}" for k, v in made.results.items())
            lines.append(f"  measured  {results}")
            lines.append(f"  data      {made.data}")
            lines.append(f"  made by   {made.script} (commands in `genrun info`)")
    return lines
