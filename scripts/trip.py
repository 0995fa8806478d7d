"""The trip of `genrun sample` (issue 19): the project files that control
passes through, call by call, from the command to pixels on disk.

    python scripts/trip.py ENGINE.onnx [--out grid.png] [--n 4]

Runs `genrun sample --engine ENGINE --n N --batch N --out OUT` in this
process with a profiler hook on every thread and prints the sequence of
project files (gentrain/, genexport/, genrun/) that hold the innermost
project frame, each change of file one step (calls and returns alike; library
frames such as typer or numpy are transparent). A step into a file the trip
had already left is a "return". One batch, so a loop does not repeat steps.
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

    trail: list[str] = []
    current: dict[int, str] = {}  # thread -> the project file it is in
    lock = threading.Lock()
    started = False

    def project_file(frame) -> str | None:
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(PACKAGES):
                return str(Path(name).relative_to(ROOT))
            frame = frame.f_back
        return None

    def hook(frame, event, _arg) -> None:
        nonlocal started
        if event not in ("call", "return"):
            return
        if not started:
            started = event == "call" and frame.f_code.co_name == "sample_command"
            if not started:
                return
        where = project_file(frame if event == "call" else frame.f_back)
        thread = threading.get_ident()
        with lock:  # a thread waiting in a library call (a future's result) stays put
            if where is not None and current.get(thread) != where:
                current[thread] = where
                if not trail or trail[-1] != where:
                    trail.append(where)

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
    for step, where in enumerate(trail):
        back = where in seen
        returns += back and step > 0
        seen.add(where)
        print(f"{step:3d} {where}{'  (return)' if back else ''}")
    entries = {name: trail.count(name) for name in dict.fromkeys(trail)}
    print(
        f"{len(trail) - 1} steps through {len(seen)} files, {returns} returns to a file "
        f"already left; entries per file: "
        + ", ".join(f"{name} {count}" for name, count in entries.items())
    )


if __name__ == "__main__":
    main()
