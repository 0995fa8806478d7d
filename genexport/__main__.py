"""`genexport` and `python -m genexport`: the CLI, imported here so that a missing
extra is one line naming what to install, not a traceback."""

from genrun.errors import launch


def main() -> None:
    launch("genexport.cli", "genexport", extra="export")


if __name__ == "__main__":
    main()
