"""Install NVIDIA's tensorrt-stubs (TensorRT's Python API as type stubs) into
.venv/typecheck, where mypy finds them (pyproject.toml [tool.mypy]) and no
import does: the stubs ship a `tensorrt` folder that would import as an empty
package and shadow a real TensorRT. --no-deps: they name the real tensorrt
packages, which download from NVIDIA's index, as dependencies.

The stubs are generated from the compiled bindings, and a few of their lines
are not Python (a parameter named `in`, a parameter without a default after
ones with defaults), which stops mypy before it checks anything. Those lines
are plugin and layer-building APIs vaeflow never calls; they are repaired
here (`in` -> `in_`, the late parameter given `= ...`), and every other line
is kept as NVIDIA wrote it. Run by scripts/setup.sh; idempotent."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

VERSION = "10.13.0.35.1"  # TensorRT 10.13, the release genexport's plans are built with
TARGET = Path(__file__).resolve().parents[1] / ".venv" / "typecheck"
STUB = TARGET / "tensorrt_bindings" / "tensorrt.pyi"
STAMP = TARGET / ".repaired"


def install() -> None:
    if STAMP.is_file() and STAMP.read_text() == VERSION:
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--upgrade",
         "--target", str(TARGET), f"tensorrt-stubs=={VERSION}"],
        check=True,
    )  # fmt: skip
    for stub in TARGET.rglob("*.pyi"):
        repair(stub)
    STAMP.write_text(VERSION)


def repair(path: Path) -> None:
    """Rewrite the lines of `path` Python cannot parse, one at a time."""
    lines = path.read_text().splitlines(keepends=True)
    for _ in range(len(lines)):
        try:
            ast.parse("".join(lines))
            break
        except SyntaxError as err:
            index = (err.lineno or 1) - 1
            fixed = _fix(lines[index])
            if fixed == lines[index]:
                message = f"{path}:{err.lineno}: cannot repair: {lines[index].strip()}"
                raise SystemExit(message) from None
            lines[index] = fixed
    path.write_text("".join(lines))


def _fix(line: str) -> str:
    line = re.sub(r"([(,] ?)in: ", r"\1in_: ", line)  # a parameter named after a keyword
    # After the first parameter with a default, give every later one a default too.
    head, sep, rest = line.partition("(")
    params, close, tail = rest.rpartition(")")
    fixed, defaulted = [], False
    for param in _split(params):
        if "=" in param:
            defaulted = True
        elif defaulted and ":" in param and not param.strip().startswith("*"):
            param = f"{param} = ..."
        fixed.append(param)
    return head + sep + ",".join(fixed) + close + tail


def _split(params: str) -> list[str]:
    """Split a parameter list at its top-level commas."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(params):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(params[start:i])
            start = i + 1
    parts.append(params[start:])
    return parts


if __name__ == "__main__":
    install()
