"""Matplotlib, imported lazily (so `gentrain --help` never pays for it), on
the Agg backend, and the few drawing helpers every plot kind shares.

Figures have fixed sizes in inches at `DPI` and are saved without
`bbox_inches="tight"`, so a kind always writes a PNG of the same pixel size.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from genrun.atomic import write_atomic
from genrun.images import make_grid

DPI = 100


def new_figure(width: float, height: float, rows: int = 1, cols: int = 1, **options):
    """(figure, array of axes) of width x height inches on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width, height),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
        **options,
    )
    return fig, axes


def save_figure(fig, path: str | Path) -> Path:
    """Write the figure as a PNG atomically (no partial file at `path`) and free it."""
    from matplotlib import pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())
    return path


def show_images(ax, images: np.ndarray, nrow: int, title: str | None = None) -> None:
    """Tile uint8 (N, C, H, W) images into `ax`, nearest-neighbour, no ticks."""
    grid = make_grid(images, nrow=nrow, padding=1, pad_value=128)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
