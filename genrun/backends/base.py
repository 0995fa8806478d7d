"""What every backend's runner is: opened by its module's `load(path,
options)`, then `run(feeds)` as often as wanted, then `close()`, which frees
everything the runner holds (sessions, device buffers, pinned memory,
streams, CUDA graphs). A runner is a context manager; closing twice is a
no-op. This is Polygraphy's activate / infer / deactivate, with the loader
doing the activation. Runners are driven through `genrun.engine.Engine`,
whose `run` checks the inputs and refuses a closed runner, so a runner's
own `run` is the backend's work and nothing else."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest, TensorSpec

Feeds = dict[str, np.ndarray]
# Notices a user should see once (a provider that did not load under auto, a
# CUDA graph that could not be captured): printed bare on stderr by logging's
# last-resort handler unless the application configures logging itself.
log = logging.getLogger("genrun")


@dataclass(frozen=True)
class LoadOptions:
    """What `genrun.load` passes every backend; each refuses what it cannot honour."""

    provider: str = "auto"  # "auto", "cpu", "cuda" or "tensorrt"
    threads: int | None = None  # ONNX Runtime's intra-op CPU threads (None: its own count)
    spin: bool = True  # idle intra-op threads spin (genrun.backends.onnxruntime.session_options)
    cuda_graphs: bool = False  # TensorRT plans: one CUDA graph per batch size


class Runner:
    """One engine file, opened. Subclasses set the attributes below in their
    constructor and implement `run` and `_close`."""

    provider: str  # what runs the graph: "cpu", "cuda" or "tensorrt"
    path: Path
    manifest: Manifest | None  # None for a foreign ONNX graph
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # The graph's inputs and outputs as the runtime reports them, which
    # genrun.engine holds the manifest to (None: the runtime reports none).
    graph: tuple[list[TensorSpec], list[TensorSpec]] | None = None
    # Settings a number depends on, for `genrun info` and benchmark tables
    # (e.g. {"tf32": "off"}).
    settings: dict[str, str]
    closed = False

    def run(self, feeds: Feeds) -> Feeds:
        """Every output by name, as host numpy arrays the caller owns."""
        raise NotImplementedError

    def close(self) -> None:
        """Free what the runner holds; later calls do nothing."""
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _close(self) -> None:
        raise NotImplementedError
