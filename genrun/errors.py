"""The one exception type that the CLIs turn into a one-line message, and the
entry points that say which extra to install when a dependency is missing.

Raise `UserError` for anything the user can fix (bad input, missing file,
incompatible options); its message must name the problem and the fix. Every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys

# The extra of pyproject.toml that installs each optional module (by import name).
EXTRA_OF_MODULE = {
    "torch": "train",
    "matplotlib": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "cpu",  # or gpu-cu13 / gpu-cu12 on an NVIDIA GPU
    "cuda": "gpu-cu13",
    "tensorrt": "tensorrt-cu13",
    "ray": "ray",
    "tritonclient": "triton",
}
# Extras that include others: a genexport user missing torch installs [export].
_INCLUDES = {"export": {"train"}, "tensorrt-cu13": {"gpu-cu13"}}


class UserError(Exception):
    """A problem with the user's input, reported as one line and a non-zero exit."""


def missing_extra_message(err: ModuleNotFoundError, needs: str | None = None) -> str | None:
    """'torch is not installed; ...' naming the extra that installs the missing
    module (or `needs`, the CLI's own extra, where that includes it); None when
    the module is not one of an extra's (then it is a bug, not a missing extra)."""
    module = (err.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    if needs is not None and extra in _INCLUDES.get(needs, ()):
        extra = needs
    return f"{module} is not installed; install it with: pip install 'vaeflow[{extra}]'"


def launch(module: str, prog_name: str, extra: str | None = None) -> None:
    """The console entry point: import the CLI `module` and run its `main()`.
    Importing it inside this function lets a missing extra (gentrain without
    torch) end as one line naming the fix, exit 2, instead of a traceback."""
    try:
        cli = importlib.import_module(module)
    except ModuleNotFoundError as err:
        message = missing_extra_message(err, extra)
        if message is None:
            raise
        print(f"{prog_name}: error: {message}", file=sys.stderr)
        sys.exit(2)
    cli.main()


def run_cli(app, prog_name: str, extra: str | None = None) -> None:
    """Run a typer app so that a UserError prints as one line on stderr with
    exit status 2, as does a missing optional module (a plot without
    matplotlib). Usage errors and Ctrl-C are typer's own (exit 2 and 1);
    anything else is a bug and keeps its traceback. Docstrings become help
    text through `unwrap_help` first."""
    _unwrap_app_help(app)
    try:
        app(prog_name=prog_name)
    except UserError as err:
        print(f"{prog_name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as err:
        message = missing_extra_message(err, extra)
        if message is None:
            raise
        print(f"{prog_name}: error: {message}", file=sys.stderr)
        sys.exit(2)


# A paragraph whose every line is a command (or indented) is an example block:
# its lines stay as written. Any other paragraph is prose wrapped at 80 columns.
_EXAMPLE_LINE = re.compile(r"^(gentrain|genexport|genrun|python|pip|bash|\s)")


def unwrap_help(text: str | None) -> str | None:
    """A docstring as help text: prose paragraphs joined into single lines (typer
    shows a docstring's hard line breaks as they are, mid-sentence) and
    example blocks kept line by line."""
    if not text:
        return text
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        lines = paragraph.splitlines()
        if lines and all(_EXAMPLE_LINE.match(line) for line in lines):
            paragraphs.append(paragraph)
        else:
            paragraphs.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(paragraphs)


def _unwrap_app_help(app) -> None:
    """Apply `unwrap_help` to a typer app, its commands and its sub-apps."""
    app.info.help = unwrap_help(app.info.help)
    for command in app.registered_commands:
        command.help = unwrap_help(command.help or inspect.getdoc(command.callback))
    for group in app.registered_groups:
        group.help = unwrap_help(group.help)
        _unwrap_app_help(group.typer_instance)
