"""No import circle among the project's modules (gentrain, genexport, genrun):
read with ast, every import at module level (typing-only ones included, they
are a circle to a reader too) is an edge, and the graph must have no cycle.
Imports inside functions (the way to import lazily) may not make one
either."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gentrain", "genexport", "genrun")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(tree: ast.Module, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: at module level, also
    inside module-level if/try/with blocks; with `lazy` those inside a def
    or a class too."""
    if lazy:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                todo += getattr(node, block, [])
        elif isinstance(node, ast.ExceptHandler):
            todo += node.body
    return found


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    """module -> the project modules it imports at module level (with
    `lazy`, anywhere)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
                continue
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
            target = ".".join([*base, node.module] if node.module else base)
            if node.level == 0:
                target = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                edges.add(sub if sub in modules else target)
        graph[name] = {target for target in edges if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = import_graph()
    assert "genrun.manifest" in graph["genrun.engine"]
    assert "genrun.readers.spec" in graph["genrun.readers"]  # `from .spec import ...`
    assert "gentrain.ddp" in graph["gentrain.train"]  # `from . import ddp`


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_import_cycles_through_lazy_imports_either() -> None:
    found = cycles(import_graph(lazy=True))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_manifest_is_a_schema() -> None:
    """genrun/manifest.py is the contract between the packages: it imports
    nothing of genrun and nothing that does file or JSON I/O, which is
    genrun/manifest_io.py's job."""
    assert import_graph(lazy=True)["genrun.manifest"] == set()
    tree = ast.parse((ROOT / "genrun" / "manifest.py").read_text())
    imported = {
        name.split(".")[0]
        for node in _imports(tree, lazy=True)
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
        )
        if name
    }
    io_modules = {"json", "pathlib", "os", "io", "shutil", "tempfile", "onnx", "onnxruntime"}
    assert not imported & io_modules, f"genrun/manifest.py imports {imported & io_modules}"
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "id")}
    assert "open" not in calls


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
