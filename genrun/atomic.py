"""The one way vaeflow writes an output file or folder: all of it or nothing.

`AtomicFile(path)` hands out a binary file; on `commit()` (or leaving its
`with` block normally) the bytes appear at `path` in one rename, and on an
exception they vanish. The rules, the same for PNG grids, npz streams, CSVs,
PNG folders, checkpoints and engines:

- The temporary sits beside its target (same filesystem, so the rename is
  atomic) and is named `.NAME.PID.HEX.tmp`; it is fsynced before the rename
  and the folder after it, so a power cut leaves the old file or the new one.
- A new file gets the user's umask (0644 under the usual 022), not mkstemp's
  0600; an existing file keeps its permission bits.
- A symlink is written through: its target is replaced, the link stays.
- What is not a regular file (a pipe, /dev/stdout, /dev/null, a terminal) is
  streamed into as it is: renaming over it would destroy it, and its errors
  (ENOSPC on /dev/full) reach the caller.
- Temporaries are removed on any exception and on SIGTERM; those left by a
  process that was killed outright (kill -9) are swept on the next write into
  the same folder once their writer's pid is gone.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# `.NAME.PID.HEX.tmp`: the pid says whose it is, so a sweep never takes a live
# writer's file; the 32 hex digits keep concurrent writers of one name apart.
_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{32}\.tmp$")


def temp_name(target: Path) -> Path:
    """A fresh temporary path beside `target`, in the naming the sweep knows."""
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def resolve_target(path: str | Path) -> Path:
    """The file a write to `path` lands in: symlinks followed (a dangling one
    to where it points), so the link itself survives the rename."""
    return Path(os.path.realpath(Path(path).expanduser()))


def is_stream(path: str | Path) -> bool:
    """Whether `path` exists and is not a regular file or a folder (a pipe, a
    device, /dev/stdout): such a target is written into, never renamed over."""
    try:
        mode = os.stat(path).st_mode  # follows links, /proc/self/fd magic included
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def target_folder(path: str | Path) -> Path | None:
    """The folder a write to `path` lands in (links followed), or None for a
    stream, which is written into where it is."""
    return None if is_stream(path) else resolve_target(path).parent


def existing_mode(target: Path) -> int | None:
    """The permission bits of a regular file already at `target`, else None."""
    try:
        st = os.stat(target)
    except OSError:
        return None
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _StreamFile(io.FileIO):
    """A file written strictly front to back: /dev/null claims to seek, and
    zipfile would then write offsets it never reached; without seeks it
    writes a streamable archive (data descriptors), as it does into a pipe."""

    def seekable(self) -> bool:
        return False

    def seek(self, *args) -> int:
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        raise io.UnsupportedOperation("tell")


class AtomicFile:
    """A binary file that appears at `path` whole on `commit()`, or not at all."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.committed = False
        self.tmp: Path | None = None
        if is_stream(self.path):
            # Append, not truncate: `--out /dev/stdout >> log` must not empty log.
            self.file: BinaryIO = io.BufferedWriter(_StreamFile(self.path, "a"))
            return
        self.target = resolve_target(self.path)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.target.parent)
        mode = existing_mode(self.target)
        self.tmp = temp_name(self.target)
        # os.open with 0o666 lets the umask decide, as open() does for any new file.
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        _pending.add(self.tmp)
        if mode is not None:
            os.fchmod(fd, mode)
        self.file = os.fdopen(fd, "wb")

    def write(self, data) -> int:
        return self.file.write(data)

    def commit(self) -> None:
        """Flush, fsync and rename into place (or just flush and close a stream)."""
        try:
            self.file.flush()
            if self.tmp is not None:
                os.fsync(self.file.fileno())
        finally:
            self.file.close()  # may itself raise, e.g. ENOSPC on /dev/full
        if self.tmp is not None:
            os.replace(self.tmp, self.target)
            _pending.discard(self.tmp)
            fsync_folder(self.target.parent)
        self.committed = True

    def discard(self) -> None:
        """Close and remove the temporary; the target is left as it was."""
        with contextlib.suppress(OSError):
            self.file.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
            _pending.discard(self.tmp)

    def __enter__(self) -> AtomicFile:
        _signals.enter()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.commit()
            else:
                self.discard()
        except BaseException:
            self.discard()
            raise
        finally:
            _signals.exit()


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash never leaves a partial file there."""
    with AtomicFile(path) as out:
        out.write(data)


def write_all_atomic(files: dict[Path, bytes]) -> None:
    """Write every file or none: all go to temporaries first and are renamed
    into place only when every one was written (a set of engines and their
    manifests)."""
    opened: list[AtomicFile] = []
    _signals.enter()
    try:
        for path, data in files.items():
            opened.append(AtomicFile(path))
            opened[-1].write(data)
        for out in opened:
            out.commit()
    finally:
        for out in opened:
            if not out.committed:
                out.discard()
        _signals.exit()


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty hidden folder to fill; it is renamed to `path` when the
    block ends normally and removed otherwise. `path` must not exist or be an
    empty folder (then its permissions are kept)."""
    target = resolve_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target.parent)
    tmp = temp_name(target)
    _signals.enter()
    _pending.add(tmp)
    try:
        tmp.mkdir()
        with contextlib.suppress(OSError):
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        yield tmp
        os.replace(tmp, target)
        fsync_folder(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _pending.discard(tmp)
        _signals.exit()


def sweep_stale(folder: Path) -> list[Path]:
    """Remove temporaries of our naming in `folder` whose writing process is
    gone (it was killed before it could clean up). Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or _alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


# ----------------------------------------------------------------------------- SIGTERM

_pending: set[Path] = set()  # temporaries of writes in progress


class _SigtermCleanup:
    """While a write is in progress, SIGTERM removes the temporaries before
    the process dies of it. Only where nobody else handles SIGTERM (a trainer
    that saves on SIGTERM raises instead, and the write's own cleanup runs)."""

    def __init__(self) -> None:
        self.depth = 0
        self.installed = False
        self.lock = threading.Lock()

    def enter(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with self.lock:
            if self.depth == 0:
                self.installed = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
                if self.installed:
                    signal.signal(signal.SIGTERM, self._handle)
            self.depth += 1

    def exit(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with self.lock:
            self.depth -= 1
            if self.depth == 0 and self.installed:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                self.installed = False

    @staticmethod
    def _handle(signum, frame) -> None:
        for tmp in list(_pending):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        # Die of the signal as if nobody had caught it (exit status 143 in a shell).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


_signals = _SigtermCleanup()
