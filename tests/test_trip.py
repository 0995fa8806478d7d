"""The way data takes through genrun stays short (issue 19): `genrun sample`
from the command to a PNG grid on disk, counted call by call by
scripts/trip.py, is at most 12 steps between files and at most 4 returns to
a file already left (docs/architecture.md lists the calls)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_the_sample_trip_is_at_most_12_steps_and_4_returns(tmp_path) -> None:
    grid = tmp_path / "grid.png"
    engine = ROOT / "genrun" / "builtin" / "digits-glow.generate.onnx"
    result = subprocess.run(
        [sys.executable, ROOT / "scripts" / "trip.py", engine, "--out", grid, "--n", "4"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's packages, counted
    )
    last = result.stdout.strip().splitlines()[-1]
    counted = re.match(r"(\d+) steps through (\d+) files, (\d+) returns", last)
    assert counted, result.stdout
    steps, files, returns = map(int, counted.groups())
    assert steps <= 12 and returns <= 4, result.stdout
    assert files >= 5  # the hook saw the trip: the command, engine, backend, sampler, output
    assert Image.open(grid).size[0] > 0
