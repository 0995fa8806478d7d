"""The catalogue of the engines that ship with the runtime (genrun/builtin),
so `pip install vaeflow` has something to run without torch or training:

    genrun sample --engine builtin:mnist-glow --label 7 --n 64 --out sevens.png
    genrun likelihood --engine builtin:mnist-glow --data mnist:DIR
    genrun classify --engine builtin:mnist-glow --data mnist:DIR
    genrun models                       # what ships, its size and measured quality

`builtin:NAME` names a model; each command takes the file of the role it
needs (sampling NAME.generate.onnx, scoring and classifying
NAME.marginal.onnx or NAME.density.onnx). `genrun.load` opens them
(`genrun.engine.locate` finds the file); this module lists them. Each
engine's manifest records how it was made (`provenance`:
scripts/builtin_engines.py's exact commands, the data and its licence, the
measured results); genrun/builtin/README.md says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .describe import file_size
from .engine import BUILTIN, BUILTIN_DIR
from .errors import UserError
from .manifest import Manifest
from .manifest_io import manifest_in


@dataclass
class BuiltinEngine:
    name: str  # the model: builtin:NAME
    graph: str  # generate, marginal or density
    path: Path
    manifest: Manifest

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def engines() -> list[BuiltinEngine]:
    """Every shipped engine file with its manifest, by model then graph."""
    found = []
    for path in sorted(BUILTIN_DIR.glob("*.onnx")):
        name, graph = path.name.split(".")[:2]
        manifest = manifest_in(path)  # the manifest only: no session is opened
        if manifest is None:
            raise UserError(
                f"{path} holds no vaeflow manifest; the install is damaged: reinstall vaeflow"
            )
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
            f"{BUILTIN}{name}  {first.family}, images {first.data_shape}{classes}, "
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
