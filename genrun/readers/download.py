"""The MNIST release, downloaded into a cache folder (VAEFLOW_CACHE, default
~/.cache/vaeflow) from the first mirror that answers, checked by sha256."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from genrun.atomic import AtomicFile
from genrun.errors import UserError

from .idx import MNIST_STEMS

# sha256 of the official gzipped (.gz) release files, identical on every mirror.
SHA256 = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_DOWNLOAD_TIMEOUT_S = 60


def cache_dir() -> Path:
    root = os.environ.get("VAEFLOW_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "vaeflow") / "mnist"


def fetch_mnist(directory: Path) -> Path:
    """Make sure the four MNIST files are in `directory`, downloading the
    missing ones (gzipped or raw copies already there are used as they are)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the cache folder {directory} ({err.strerror}); "
            f"set VAEFLOW_CACHE to a writable folder"
        ) from err
    for stem in MNIST_STEMS.values():
        if not (directory / f"{stem}.gz").is_file() and not (directory / stem).is_file():
            _download_mnist_file(stem, directory)
    return directory


def _download_mnist_file(stem: str, directory: Path) -> None:
    """Try each mirror in turn; only a network failure moves on to the next,
    a checksum mismatch stops (a mirror serving other bytes is suspicious)."""
    reason = "no mirror tried"
    for mirror in MIRRORS:
        try:
            name = f"{stem}.gz"
            _download_verified(mirror + name, directory / name, SHA256[stem])
            return
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts included
            reason = str(getattr(err, "reason", err) or type(err).__name__)
    reason = " ".join(reason.split())  # the message must stay on one line
    raise UserError(
        f"could not download MNIST ({reason}); "
        f"download the four files yourself and use --data mnist:DIR"
    )


def _download_verified(url: str, target: Path, sha256: str) -> None:
    """Stream `url` into `target` through the shared atomic writer (a
    temporary beside it, renamed into place only when whole and its sha256
    right): an interrupted or bad download never leaves a file at `target`,
    and one killed outright is swept by the next write into the folder."""
    digest = hashlib.sha256()
    with (
        AtomicFile(target) as out,
        urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response,
    ):
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:  # raised inside: the temporary is removed
            raise UserError(
                f"{url} gave a file with the wrong sha256 ({digest.hexdigest()[:16]}...), "
                f"so it was removed; try again later or download it yourself and use "
                f"--data mnist:DIR"
            )
