"""One install per role: the runtime imports none of the training stack, a CLI
whose extra is missing says which to install, `python -m` runs every CLI,
the shipped digits are scikit-learn's, and --help shows whole sentences."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A meta-path finder that makes the named top-level modules uninstallable, as
# in a `pip install 'vaeflow[cpu]'` (the runtime) without other extras
# (sys.modules[name] = None would also hide them, but a finder catches
# submodules and late imports alike).
_BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
    """
)
RUNTIME_ONLY = "torch,matplotlib,sklearn,onnx,onnxscript,gentrain,genexport"


def _python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + textwrap.dedent(code), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


def test_genrun_cli_runs_without_the_training_stack(glow_exported, digits, tmp_path) -> None:
    """Every genrun command, through `python -m genrun`, with torch, matplotlib,
    scikit-learn and onnx uninstallable; none of them is imported."""
    code = """
        import runpy, sys
        commands = [a.split("|") for a in sys.argv[2:]]
        for argv in commands:
            sys.argv = ["genrun", *argv]
            try:
                runpy.run_module("genrun", run_name="__main__", alter_sys=True)
            except SystemExit as exit_:
                assert not exit_.code, (argv, exit_.code)
        loaded = sorted(set(BLOCKED) & {m.split(".")[0] for m in sys.modules})
        print("loaded:", loaded)
    """
    generate, density = str(glow_exported["generate"]), str(glow_exported["density"])
    commands = [
        f"info|--engine|{generate}",
        f"sample|--engine|{generate}|--n|8|--out|{tmp_path / 's.npz'}",
        f"likelihood|--engine|{density}|--data|digits|--out|{tmp_path / 'scores.csv'}",
        f"bench|--engine|{generate}|--batch|1|--seconds|0.05",
    ]
    result = _python(code, RUNTIME_ONLY, *commands, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("loaded: []"), result.stdout
    assert np.load(tmp_path / "s.npz")["images"].shape == (8, 1, 8, 8)
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + len(digits.test.images)
    assert "FLOPs not counted (needs onnx: pip install 'vaeflow[export]')" in result.stdout


@pytest.mark.parametrize(
    ("prog", "blocked", "extra"),
    [
        # The base install names no ONNX Runtime build (onnxruntime and
        # onnxruntime-gpu share one import name): [cpu] or [gpu-cu13] brings one.
        ("genrun", "onnxruntime", "cpu"),
        ("gentrain", "torch", "train"),
        ("genexport", "onnx", "export"),
        ("genexport", "torch", "export"),  # [export] brings [train]'s torch too
    ],
)
def test_a_missing_extra_is_one_line_naming_it(prog, blocked, extra) -> None:
    code = f"""
        import runpy, sys
        sys.argv = ["{prog}", "--help"]
        runpy.run_module("{prog}", run_name="__main__", alter_sys=True)
    """
    result = _python(code, blocked)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"{prog}: error: {blocked} is not installed; "
        f"install it with: pip install 'vaeflow[{extra}]'"
    ]


def test_a_lazily_imported_missing_module_is_one_line_too() -> None:
    """matplotlib is imported only inside `gentrain plot`: run_cli turns its
    absence there into the same one line; other missing modules stay bugs."""
    import typer
    from cli_helpers import InProcessCli

    from genrun.errors import missing_extra_message, run_cli

    app = typer.Typer()

    @app.command()
    def plot(module: str) -> None:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)

    @app.command()
    def other() -> None:
        pass

    cli = InProcessCli(lambda: run_cli(app, "gentrain", extra="train"), "gentrain")
    cli.assert_one_line_error(cli.run("plot", "matplotlib.pyplot"), "pip install 'vaeflow[train]'")
    with pytest.raises(ModuleNotFoundError):
        cli.run("plot", "gentrain.nothing")
    err = ModuleNotFoundError("No module named 'onnx'", name="onnx")
    assert missing_extra_message(err, needs="train").endswith("'vaeflow[export]'")


@pytest.mark.parametrize("prog", ["genrun", "gentrain", "genexport"])
def test_python_dash_m_runs_each_cli(prog) -> None:
    result = subprocess.run(
        [sys.executable, "-m", prog, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TERMINAL_WIDTH": "100"},
    )
    assert result.returncode == 0, result.stderr
    assert f"Usage: {prog}" in result.stdout


def test_shipped_digits_are_scikit_learns() -> None:
    """genrun/data/digits.npz holds load_digits' values exactly (checksummed,
    and compared with scikit-learn itself where it is installed)."""
    with np.load(ROOT / "genrun" / "data" / "digits.npz") as data:
        images, labels = data["images"], data["labels"]
    assert images.shape == (1797, 8, 8) and images.max() == 16
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == DIGITS_SHA256
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        return
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def _all_commands():
    """(prog, main, argv prefix, command info) for every command of the three CLIs."""
    pytest.importorskip("torch")
    from genexport.cli import app as export_app
    from genexport.cli import main as export_main
    from genrun.cli import app as run_app
    from genrun.cli import main as run_main
    from gentrain.cli import app as train_app
    from gentrain.cli import main as train_main

    def walk(app, prefix):
        for command in app.registered_commands:
            name = command.name or command.callback.__name__.replace("_", "-")
            yield [*prefix, name], command
        for group in app.registered_groups:
            yield from walk(group.typer_instance, [*prefix, group.name])

    for prog, main, app in (
        ("genrun", run_main, run_app),
        ("gentrain", train_main, train_app),
        ("genexport", export_main, export_app),
    ):
        for argv, command in walk(app, []):
            yield prog, main, argv, command


def test_help_shows_each_docstring_paragraph_as_one_line(monkeypatch) -> None:
    """typer prints a docstring's hard line breaks as they are; run_cli joins
    prose paragraphs so --help never breaks a sentence where the source did."""
    import inspect

    import typer.rich_utils
    from cli_helpers import InProcessCli

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 1000)  # no wrapping by rich
    checked = 0
    for prog, main, argv, command in list(_all_commands()):
        doc = inspect.getdoc(command.callback) or ""
        code, stdout, err = InProcessCli(main, prog).run(*argv, "--help")
        assert code == 0, err
        for paragraph in doc.split("\n\n"):
            if "\n" in paragraph and not paragraph.lstrip().startswith(prog):
                joined = " ".join(line.strip() for line in paragraph.splitlines())
                assert joined in stdout, (argv, joined, stdout)
                checked += 1
    assert checked >= 3  # the check saw multi-line docstrings
