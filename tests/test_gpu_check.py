"""scripts/gpu-check.sh's CPU dry run: every stage of the GPU check against
tests/fake_gpu.py (training on the CPU, the fake TensorRT and CUDA, the CPU
provider standing in for CUDA), so the script is known to work before a GPU
machine is lent. Its real run fits 6 minutes by construction: the stage
timeouts add up to less, which is checked here too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"


def test_stage_timeouts_add_up_to_under_six_minutes() -> None:
    limits = [int(s) for s in re.findall(r"^\s*stage \S+ (\d+) ", SCRIPT.read_text(), re.M)]
    assert len(limits) == 6 and sum(limits) < 360, limits


def test_dry_run_passes_every_stage(tmp_path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=1500
    )  # the script's own stage limits (x4 in a dry run) stop it first
    summary = (tmp_path / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stderr
    for number, stage in enumerate(["truth", "train", "parity", "graphs", "throughput"], 1):
        assert (tmp_path / f"{number}-{stage}.txt").is_file(), (stage, summary)
    truth = (tmp_path / "1-truth.txt").read_text()
    assert "torch imported: False" in truth and "--provider auto: runs on cpu" in truth
    parity = (tmp_path / "3-parity.txt").read_text()
    assert "FAILED" not in parity and "not run" not in parity, parity
    assert parity.count("built, parity ok") == 2  # Glow generate, density (fp32)
    graphs = (tmp_path / "4-graphs.txt").read_text()
    assert graphs.count("equal; graphed [4, 8, 32]") == 2, graphs
    assert (
        "| glow generate | 1 | TensorRT plan fp32 | off |"
        in (tmp_path / "5-throughput.txt").read_text()
    )
