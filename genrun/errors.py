"""The one exception type that the CLIs turn into a one-line message.

Raise `UserError` for anything the user can fix (bad input, missing file,
incompatible options); its message must name the problem and the fix. Every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and a non-zero exit."""


def run_cli(app, prog_name: str) -> None:
    """Run a typer app so that a UserError prints as one line on stderr with
    exit status 2. Usage errors and Ctrl-C are typer's own (exit 2 and 1);
    anything else is a bug and keeps its traceback."""
    import sys

    try:
        app(prog_name=prog_name)
    except UserError as err:
        print(f"{prog_name}: error: {err}", file=sys.stderr)
        sys.exit(2)
