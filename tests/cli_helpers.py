"""Running a CLI's `main()` in-process, as the tests of every CLI do."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable
from unittest import mock


class InProcessCli:
    """`run(*args)` -> (exit status, stdout, stderr) of `prog args...`."""

    def __init__(self, main: Callable[[], None], prog: str) -> None:
        self.main, self.prog = main, prog

    def run(self, *args) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with (
            mock.patch.object(sys, "argv", [self.prog, *map(str, args)]),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                self.main()
                code = 0
            except SystemExit as exit_:
                code = exit_.code or 0
        return code, out.getvalue(), err.getvalue()

    def assert_one_line_error(self, result: tuple[int, str, str], match: str) -> None:
        """Exit status 2 and exactly one stderr line, `PROG: error: ...MATCH...`."""
        code, _, err = result
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith(f"{self.prog}: error:"), err
        assert match in lines[0], lines[0]
