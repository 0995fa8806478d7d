"""A dependency-free progress line for training loops.

On a terminal it redraws one line; in logs (CI, nohup) it prints a line every
`every` updates so the log stays readable.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, start: int = 0, every: int = 100) -> None:
        self.total, self.start, self.every = total, start, every
        self.started = time.perf_counter()
        self.interactive = sys.stderr.isatty()

    def update(self, step: int, text: str) -> None:
        done = step - self.start
        if not self.interactive and done % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(done, 1) * (self.total - step)
        width = 24
        filled = int(width * step / max(self.total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} {text} "
            f"| {_clock(elapsed)} elapsed, {_clock(eta)} left"
        )
        if self.interactive:
            sys.stderr.write("\r" + line + "\x1b[K")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.interactive:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"
