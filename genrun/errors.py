"""The one exception type that the CLIs turn into a one-line message.

Raise `UserError` for anything the user can fix (bad input, missing file,
incompatible options); its message must name the problem and the fix. Every
other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and a non-zero exit."""


def run_cli(app, prog_name: str) -> None:
    """Run a typer app so that a UserError is one line on stderr and exit
    status 2, Ctrl-C is exit 130, and usage errors read as click prints them.
    Anything else is a bug and keeps its traceback."""
    import sys

    import click

    try:
        app(prog_name=prog_name, standalone_mode=False)
    except UserError as err:
        click.echo(f"{prog_name}: error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo(f"{prog_name}: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
