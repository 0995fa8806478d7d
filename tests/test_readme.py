"""README's lifecycle block runs as written: each command is parsed out of
README.md (so the README cannot drift from the CLIs), with DIR the
repository's MNIST subset, in a fresh folder. Only the training length and
model size are shortened, through gentrain's environment options
(GENTRAIN_FIT_GLOW_*), never by editing a command."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import numpy as np
from cli_helpers import InProcessCli
from conftest import MNIST_DIR
from PIL import Image

from genexport.cli import main as genexport_main
from genrun.cli import main as genrun_main
from gentrain.cli import main as gentrain_main

README = Path(__file__).resolve().parents[1] / "README.md"
CLIS = {
    "gentrain": InProcessCli(gentrain_main, "gentrain"),
    "genexport": InProcessCli(genexport_main, "genexport"),
    "genrun": InProcessCli(genrun_main, "genrun"),
}
# Seconds instead of an hour: 3 steps of a Glow with one 8-channel step per level.
SHORT_FIT = {
    "GENTRAIN_FIT_GLOW_STEPS": "3",
    "GENTRAIN_FIT_GLOW_DEPTH": "1",
    "GENTRAIN_FIT_GLOW_HIDDEN": "8",
}


def lifecycle_commands(readme: str, data_dir: Path) -> list[list[str]]:
    """The argv of each command in the first bash block under README's
    "lifecycle" heading, comments dropped and the word DIR replaced."""
    section = re.search(r"^## The lifecycle.*?^```bash\n(.*?)^```", readme, re.M | re.S)
    assert section, "README.md has no '## The lifecycle' section with a bash block"
    commands = []
    for line in section.group(1).splitlines():
        line = re.sub(r"\bDIR\b", shlex.quote(str(data_dir)), line)
        argv = shlex.split(line, comments=True)
        if argv:
            commands.append(argv)
    return commands


def test_lifecycle_block_parses_into_the_five_commands() -> None:
    commands = lifecycle_commands(README.read_text(), Path("/data"))
    assert [argv[:2] for argv in commands] == [
        ["gentrain", "fit"],
        ["gentrain", "eval"],
        ["genexport", "onnx"],
        ["genrun", "sample"],
        ["genrun", "likelihood"],
    ]
    assert commands[0][3:5] == ["--data", "mnist:/data"]


def test_readme_lifecycle_runs_as_written(tmp_path, monkeypatch, mnist) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in SHORT_FIT.items():
        monkeypatch.setenv(name, value)
    outputs = {}
    for argv in lifecycle_commands(README.read_text(), MNIST_DIR):
        assert argv[0] in CLIS, f"README runs {argv[0]}, which this test does not know"
        code, stdout, err = CLIS[argv[0]].run(*argv[1:])
        assert code == 0, f"{shlex.join(argv)} failed:\n{err}"
        outputs[argv[1]] = stdout
    run = tmp_path / "runs" / "glow"
    assert "step 3:" in outputs["eval"] and "bpd" in outputs["eval"]  # the short run's figures
    assert {p.name for p in run.glob("*.onnx")} == {"glow.generate.onnx", "glow.density.onnx"}
    assert "all parity checks passed" in outputs["onnx"]
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.mode == "L" and min(grid.size) >= 8 * 28  # an 8 x 8 grid of digits
    header, *rows = csv.reader((tmp_path / "scores.csv").open())
    assert header[-1] == "nll" and len(rows) == len(mnist.test.images)  # each test image once
    scores = np.array([float(row[-1]) for row in rows])
    assert np.isfinite(scores).all() and (scores > 0).all()
