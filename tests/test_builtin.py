"""The engines that ship with genrun (genrun/builtin): with only the runtime
(torch, onnx, gentrain and genexport uninstallable, as in `pip install
vaeflow`), `builtin:NAME` samples, scores and classifies; each manifest says
how the engine was made; the wheel carries them, small."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_packaging import RUNTIME_ONLY, _python

from genrun.builtin import engines
from genrun.engine import BUILTIN_DIR, builtin_names, locate

ROOT = Path(__file__).resolve().parents[1]
MNIST_MINI = ROOT / "tests" / "data" / "mnist-mini"
SHIPPED = ("digits-glow", "mnist-glow")
MAX_WHEEL_BYTES = 15 * 2**20


def test_the_shipped_engines_sample_score_and_classify_without_torch(tmp_path) -> None:
    code = """
        import runpy, sys
        for argv in (a.split("|") for a in sys.argv[2:]):
            sys.argv = ["genrun", *argv]
            try:
                runpy.run_module("genrun", run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                assert not exit_.code, (argv, exit_.code)
        print("loaded:", sorted(set(BLOCKED) & {m.split(".")[0] for m in sys.modules}))
    """
    commands = [
        "models",
        f"sample|--engine|builtin:mnist-glow|--label|7|--n|8|--out|{tmp_path / 'sevens.npz'}",
        f"sample|--engine|builtin:digits-glow|--label|all|--n|3|--out|{tmp_path / 'all.png'}",
        f"likelihood|--engine|builtin:digits-glow|--data|digits|--out|{tmp_path / 'bpd.csv'}",
        f"classify|--engine|builtin:digits-glow|--data|digits|--out|{tmp_path / 'digits.csv'}",
        f"classify|--engine|builtin:mnist-glow|--data|mnist:{MNIST_MINI}",
    ]
    result = _python(code, RUNTIME_ONLY, *commands, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("loaded: []"), result.stdout
    assert np.load(tmp_path / "sevens.npz")["images"].shape == (8, 1, 28, 28)
    assert (tmp_path / "all.png").is_file()
    with open(tmp_path / "bpd.csv") as handle:
        assert len(list(csv.reader(handle))) == 1 + 180
    accuracies = [float(a) for a in re.findall(r"accuracy ([\d.]+)%", result.stdout)]
    recorded = {e.name: 100 * e.manifest.provenance.results["test_accuracy"] for e in engines()}
    # The digits' 180 test images are the very set the manifest measured: the
    # same figure. The mini MNIST test split is 100 of the 1,000 the manifest
    # measured: within 3 binomial standard deviations (about 12 points) of it.
    # Chance is 10%.
    assert len(accuracies) == 2, result.stdout
    assert accuracies[0] == pytest.approx(recorded["digits-glow"], abs=0.01), result.stdout
    assert abs(accuracies[1] - recorded["mnist-glow"]) < 12 and accuracies[1] > 70, result.stdout
    for name in SHIPPED:
        assert f"builtin:{name}" in result.stdout  # genrun models lists it


def test_each_manifest_says_how_it_was_made() -> None:
    assert set(SHIPPED) <= set(builtin_names())
    for engine in engines():
        made = engine.manifest.provenance
        assert made is not None and made.script == "scripts/builtin_engines.py"
        assert made.commands[0].startswith("gentrain fit glow --conditional")
        assert any(c.startswith("genexport onnx") and "--marginal" in c for c in made.commands)
        assert {"test_accuracy", "test_bpd_marginal", "steps", "seed"} <= set(made.results)
        assert "CC BY" in made.data
        assert engine.manifest.conditional and engine.manifest.parity
    assert (BUILTIN_DIR / "README.md").is_file() and (BUILTIN_DIR / "DIGITS.md").is_file()
    assert locate("builtin:mnist-glow", "density").name == "mnist-glow.marginal.onnx"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11's")
def test_the_wheel_carries_the_engines_and_stays_small() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["genrun"]
    shipped = [p for p in BUILTIN_DIR.iterdir() if p.is_file()]
    for path in shipped:
        assert any(path.match(f"builtin/{g.split('/')[-1]}") for g in globs), path.name
    assert sum(p.stat().st_size for p in shipped) < MAX_WHEEL_BYTES / 2
