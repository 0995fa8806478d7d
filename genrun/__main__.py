"""`genrun` and `python -m genrun`: the CLI, imported here so that a missing
extra is one line naming what to install, not a traceback."""

from genrun.errors import launch


def main() -> None:
    launch("genrun.cli", "genrun", extra=None)


if __name__ == "__main__":
    main()
