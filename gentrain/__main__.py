"""`gentrain` and `python -m gentrain`: the CLI, imported here so that a missing
extra is one line naming what to install, not a traceback."""

from genrun.errors import launch


def main() -> None:
    launch("gentrain.cli", "gentrain", extra="train")


if __name__ == "__main__":
    main()
