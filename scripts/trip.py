"""The trip of `genrun sample` (issue 19): the project files that control
passes through, call by call, from the command to pixels on disk.

    python scripts/trip.py ENGINE.onnx [--out grid.png] [--n 4]

Runs `genrun sample --engine ENGINE --n N --batch N --out OUT` in this
process with a profiler hook on every thread and counts as the issue's hand
count did, reading the code call by call: a step is a call from a function
in one project file (gentrain/, genexport/, genrun/) into a function in
another; the caller is the innermost project frame of the calling thread,
so library frames (typer, numpy, a progress bar) are transparent. Going back
up the stack is no step (the reader is still in the caller), nor is a call
with no project frame under it (a worker thread's target: the reader
followed the submit), nor running a module on its first import. A step into
a file the trip had already left is a "return". One batch, so a loop does
not repeat steps. On 57b27ed, where the issue counted 23 steps, 8 files and
15 returns by hand, this counts 21 steps, 7 files and 15 returns.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = tuple(str(ROOT / name) + "/" for name in ("genrun", "genexport", "gentrain"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/trip-grid.png"))
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()

    from genrun import cli

    trail: list[tuple[str, str]] = []  # (file entered, function called)
    lock = threading.Lock()

    def project_file(frame) -> str | None:
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(PACKAGES):
                return str(Path(name).relative_to(ROOT))
            frame = frame.f_back
        return None

    def hook(frame, event, _arg) -> None:
        if event != "call" or frame.f_code.co_name == "<module>":
            return
        callee = project_file(frame)
        if callee is None or not frame.f_code.co_filename.startswith(PACKAGES):
            return
        if not trail:  # the trip starts at the command
            if frame.f_code.co_name == "sample_command":
                trail.append((callee, "sample_command"))
            return
        caller = project_file(frame.f_back)
        if caller is not None and caller != callee:
            with lock:
                trail.append((callee, frame.f_code.co_name))

    argv = ["sample", "--engine", str(args.engine), "--n", str(args.n)]
    argv += ["--batch", str(args.n), "--out", str(args.out)]
    threading.setprofile(hook)
    sys.setprofile(hook)
    try:
        cli.app(argv, standalone_mode=False)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)

    seen: set[str] = set()
    returns = 0
    for step, (where, function) in enumerate(trail):
        back = where in seen
        returns += back
        seen.add(where)
        print(f"{step:3d} {where} {function}{'  (return)' if back else ''}")
    files = [where for where, _ in trail]
    entries = {name: files.count(name) for name in dict.fromkeys(files)}
    print(
        f"{len(trail) - 1} steps through {len(seen)} files, {returns} returns to a file "
        f"already left; entries per file: "
        + ", ".join(f"{name} {count}" for name, count in entries.items())
    )


if __name__ == "__main__":
    main()
