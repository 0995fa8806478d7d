"""genrun.atomic, the one writer of every output: umask modes, kept
permissions, fsync before rename, symlinks written through, pipes and devices
streamed into, nothing left behind on errors, SIGTERM or kill -9."""

from __future__ import annotations

import errno
import io
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from genrun import atomic
from genrun.atomic import AtomicFile, atomic_folder, sweep_stale, write_all_atomic, write_atomic
from genrun.images import save_grid, write_npz_stream

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_users_umask(tmp_path, umask, mask, expected) -> None:
    umask(mask)
    write_atomic(tmp_path / "a.csv", b"x")
    paths = [tmp_path / "m.generate.onnx", tmp_path / "m.density.onnx"]
    write_all_atomic(dict.fromkeys(paths, b"engine"))
    save_grid(np.zeros((1, 1, 2, 2), np.uint8), tmp_path / "g.png")
    write_npz_stream(tmp_path / "s.npz", "images", [np.zeros((2, 3), np.uint8)], (2, 3))
    for path in [tmp_path / "a.csv", tmp_path / "g.png", tmp_path / "s.npz", *paths]:
        assert _mode(path) == expected, path


def test_checkpoints_get_the_umask_not_0600(tmp_path, umask) -> None:
    pytest.importorskip("torch")
    from gentrain.checkpoint import save_checkpoint

    umask(0o022)
    save_checkpoint(tmp_path / "checkpoint.pt", {"step": 1})
    assert _mode(tmp_path / "checkpoint.pt") == 0o644


def test_an_existing_files_permissions_are_kept(tmp_path, umask) -> None:
    umask(0o022)
    path = tmp_path / "scores.csv"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o640
    os.chmod(path, 0o600)
    write_npz_stream(path, "a", [np.zeros((1, 1), np.uint8)], (1, 1))
    assert _mode(path) == 0o600


def test_fsync_comes_before_the_rename_and_the_folder_after(tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    write_atomic(tmp_path / "x.png", b"data")
    assert calls == ["fsync file", "replace", "fsync folder"]


def test_a_symlink_is_written_through_to_its_target(tmp_path) -> None:
    real = tmp_path / "store" / "x.npz"
    real.parent.mkdir()
    real.write_bytes(b"old")
    os.chmod(real, 0o640)
    link = tmp_path / "x.npz"
    link.symlink_to(real)
    write_npz_stream(link, "images", [np.arange(6, dtype=np.uint8).reshape(2, 3)], (2, 3))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert _mode(real) == 0o640
    np.testing.assert_array_equal(np.load(real)["images"], np.arange(6).reshape(2, 3))
    dangling = tmp_path / "later.csv"
    dangling.symlink_to(tmp_path / "store" / "later.csv")
    write_atomic(dangling, b"a,b\n")
    assert dangling.is_symlink() and (tmp_path / "store" / "later.csv").read_bytes() == b"a,b\n"
    assert _leftovers(tmp_path) == [] and _leftovers(real.parent) == []


def test_dev_null_is_written_into_not_replaced() -> None:
    before = os.stat("/dev/null")
    write_atomic(Path("/dev/null"), b"nothing")
    write_npz_stream(Path("/dev/null"), "a", [np.zeros((2, 2), np.uint8)], (2, 2))
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_dev_full_reports_no_space() -> None:
    with pytest.raises(OSError) as err:
        write_atomic(Path("/dev/full"), b"x" * 10)
    assert err.value.errno == errno.ENOSPC
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_a_fifo_is_streamed_into(tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = io.BytesIO()
    reader = threading.Thread(target=lambda: received.write(fifo.read_bytes()))
    reader.start()
    rows = np.arange(24, dtype=np.uint8).reshape(4, 6)
    write_npz_stream(fifo, "images", [rows[:2], rows[2:]], (4, 6))  # zipfile, no seeks
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    np.testing.assert_array_equal(np.load(io.BytesIO(received.getvalue()))["images"], rows)
    with zipfile.ZipFile(received) as archive:  # written without seeks: data descriptors
        assert archive.namelist() == ["images.npy"] and archive.testzip() is None
    assert _leftovers(tmp_path) == []


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"old")

    def batches():
        yield np.zeros((2, 3), np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_npz_stream(path, "images", batches(), (4, 3))
    with pytest.raises(RuntimeError), AtomicFile(path) as out:
        out.write(b"partial")
        raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_write_all_atomic_writes_all_or_none(tmp_path) -> None:
    files = {tmp_path / "a.onnx": b"a", tmp_path / "sub" / "b.onnx": b"b"}
    files[tmp_path / "blocker" / "c.onnx"] = b"c"
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(OSError):
        write_all_atomic(files)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "sub" / "b.onnx").exists()
    assert _leftovers(tmp_path) == [] and _leftovers(tmp_path / "sub") == []


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path) -> None:
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "pngs") as tmp:
        (tmp / "000000.png").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "pngs").mkdir(mode=0o750)
    os.chmod(tmp_path / "pngs", 0o750)
    with atomic_folder(tmp_path / "pngs") as tmp:
        (tmp / "000000.png").write_bytes(b"x")
    assert [p.name for p in (tmp_path / "pngs").iterdir()] == ["000000.png"]
    assert _mode(tmp_path / "pngs") == 0o750 and _leftovers(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path) -> None:
    dead = _dead_pid()
    stale_file = tmp_path / f".x.npz.{dead}.{uuid.uuid4().hex}.tmp"
    stale_file.write_bytes(b"half")
    stale_dir = tmp_path / f".pngs.{dead}.{uuid.uuid4().hex}.tmp"
    stale_dir.mkdir()
    (stale_dir / "000000.png").write_bytes(b"x")
    live = tmp_path / f".y.npz.{os.getppid()}.{uuid.uuid4().hex}.tmp"  # a live writer's
    live.write_bytes(b"busy")
    mine = tmp_path / f".z.npz.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    mine.write_bytes(b"busy")
    foreign = tmp_path / ".notes.tmp"  # not our naming
    foreign.write_bytes(b"keep")
    write_atomic(tmp_path / "new.csv", b"x")
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and mine.exists() and foreign.exists()
    assert sweep_stale(tmp_path) == []


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from genrun.atomic import AtomicFile
    with AtomicFile(Path(sys.argv[1])) as out:
        out.write(b"half")
        print("writing", flush=True)
        time.sleep(60)
    """
)


def _start_writer(target: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(target)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout.readline().strip() == b"writing"
    return child


def test_sigterm_removes_the_temporary_and_still_dies_of_it(tmp_path) -> None:
    child = _start_writer(tmp_path / "x.npz")
    assert len(_leftovers(tmp_path)) == 1
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_kill_9_litter_is_swept_on_the_next_write(tmp_path) -> None:
    child = _start_writer(tmp_path / "x.npz")
    child.kill()
    child.wait(timeout=30)
    assert len(_leftovers(tmp_path)) == 1
    time.sleep(0.01)
    write_atomic(tmp_path / "x.npz", b"whole")
    assert _leftovers(tmp_path) == [] and (tmp_path / "x.npz").read_bytes() == b"whole"
