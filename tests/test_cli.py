"""`gentrain` as a user runs it: fit -> eval -> sample on the embedded digits,
resume, and every bad input as a one-line error with exit status 2."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import MNIST_DIR
from PIL import Image

from gentrain.cli import main

TINY_GLOW = ["--depth", "2", "--hidden", "8", "--eval-every", "10"]
TINY_VAE = ["--hidden", "32", "--latent", "2", "--eval-every", "10"]


def gentrain(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["gentrain", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()  # typer always ends in sys.exit
    code = exit_.value.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(result: tuple[int, str, str], match: str) -> None:
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("gentrain: error:"), err
    assert match in lines[0], lines[0]


@pytest.fixture(scope="module")
def glow_run(tmp_path_factory):
    """A tiny Glow trained for 20 steps on the digits through the CLI."""
    out = tmp_path_factory.mktemp("glow")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(
        sys, "argv", ["gentrain", "fit", "glow", *TINY_GLOW, "--steps", "20", "--out", str(out)]
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    monkeypatch.undo()
    assert exit_.value.code == 0
    return out


def test_fit_writes_checkpoint_log_and_samples(glow_run) -> None:
    import torch

    payload = torch.load(glow_run / "checkpoint.pt", weights_only=True)
    assert payload["model_config"]["n_bits"] == 5  # the digits' own depth
    records = [json.loads(line) for line in (glow_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "test"] == [10, 20]
    # 8 x 8 digits of 8 x 8 pixels, 2-pixel padding, the whole grid upscaled 8x
    assert Image.open(glow_run / "samples.png").size == ((8 * 8 + 9 * 2) * 8,) * 2


def test_eval_and_sample(glow_run, tmp_path, monkeypatch, capsys) -> None:
    code, out, _ = gentrain(
        monkeypatch, capsys, "eval", glow_run / "checkpoint.pt", "--json", tmp_path / "eval.json"
    )
    assert code == 0 and "bpd_density_at_centers" in out
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert 0 < metrics["bpd"]["mean"] < 16  # 20 steps: barely trained, but a real number
    code, out, _ = gentrain(
        monkeypatch,
        capsys,
        "sample",
        glow_run / "checkpoint.pt",
        "--n",
        9,
        "--out",
        tmp_path / "grid.png",
    )
    assert code == 0 and "temperature 0.7" in out
    assert Image.open(tmp_path / "grid.png").size == ((3 * 8 + 4 * 2) * 8,) * 2


def test_resume_extends_a_finished_run(glow_run, tmp_path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes((glow_run / "checkpoint.pt").read_bytes())
    code, _, err = gentrain(
        monkeypatch, capsys, "fit", "glow", "--resume", "--steps", 25, "--out", run
    )
    assert code == 0 and "resuming at step 20" in err
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 25


def test_vae_fit_and_importance_sampled_eval(tmp_path, monkeypatch, capsys) -> None:
    code, _, _ = gentrain(
        monkeypatch, capsys, "fit", "vae", *TINY_VAE, "--steps", 20, "--out", tmp_path
    )
    assert code == 0
    code, out, _ = gentrain(
        monkeypatch, capsys, "eval", tmp_path / "checkpoint.pt", "--iw-samples", 5
    )
    assert code == 0 and "nll" in out and "nelbo" in out


def test_bad_inputs_are_one_line_errors(glow_run, tmp_path, monkeypatch, capsys) -> None:
    run = lambda *args: gentrain(monkeypatch, capsys, *args)  # noqa: E731
    ckpt = glow_run / "checkpoint.pt"
    assert_one_line_error(
        run("fit", "glow", "--data", "cifar", "--out", tmp_path / "a"), "unknown data spec 'cifar'"
    )
    assert_one_line_error(
        run("fit", "glow", "--data", f"mnist:{tmp_path / 'nowhere'}", "--out", tmp_path / "b"),
        "nowhere",
    )
    assert_one_line_error(
        run("fit", "glow", "--levels", 4, "--out", tmp_path / "c"), "--levels 3 or --size 16"
    )
    assert_one_line_error(run("fit", "glow", *TINY_GLOW, "--out", glow_run), "already holds a run")
    assert_one_line_error(run("fit", "vae", "--resume", "--out", glow_run), "holds a glow run")
    assert_one_line_error(
        run("fit", "vae", "--likelihood", "poisson", "--out", tmp_path / "d"), "poisson"
    )
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    assert_one_line_error(run("eval", broken), "truncated")
    assert_one_line_error(run("sample", ckpt, "--n", 0), "--n must be at least 1")
    assert_one_line_error(run("sample", ckpt, "--temperature", -1), "--temperature")
    assert_one_line_error(run("eval", ckpt, "--data", f"mnist:{MNIST_DIR}"), "shape (1, 28, 28)")


def test_a_hand_made_checkpoint_without_its_data_asks_for_data(
    glow_run, tmp_path, monkeypatch, capsys
) -> None:
    """Only family, config and weights (what load_checkpoint requires): eval and
    plot ask for --data in one line, and run with it."""
    from gentrain.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(glow_run / "checkpoint.pt")
    bare = {key: payload[key] for key in ("family", "model_config", "model")}
    ckpt = save_checkpoint(tmp_path / "hand-made.pt", bare)
    run = lambda *args: gentrain(monkeypatch, capsys, *args)  # noqa: E731
    assert_one_line_error(run("eval", ckpt), f"{ckpt} does not record its training data")
    assert_one_line_error(
        run("plot", "temperature", ckpt, "--out", tmp_path / "t.png"), "pass --data SPEC"
    )
    code, out, err = run("eval", ckpt, "--data", "digits", "--json", tmp_path / "m.json")
    assert code == 0, err
    assert "glow on digits test split" in out and "step" not in out.splitlines()[0]
    assert json.loads((tmp_path / "m.json").read_text())["data"] == "digits"
