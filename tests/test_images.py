"""Image grids: tile placement, grey and RGB, PNG round trips, upscaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genrun.errors import UserError
from genrun.images import make_grid, save_grid


def _images(n: int, c: int = 1, h: int = 8, w: int = 6) -> np.ndarray:
    """Image k is filled with 10 * (k + 1) (channel j adds j), so tiles are identifiable."""
    values = 10 * (np.arange(n) + 1)[:, None] + np.arange(c)[None, :]
    return np.broadcast_to(values[:, :, None, None], (n, c, h, w)).astype(np.uint8)


@pytest.mark.parametrize(
    ("n", "nrow", "rows", "cols"),
    [(10, None, 3, 4), (9, None, 3, 3), (1, None, 1, 1), (10, 5, 2, 5), (3, 8, 1, 3)],
)
def test_grid_shape(n: int, nrow: int | None, rows: int, cols: int) -> None:
    grid = make_grid(_images(n), nrow=nrow, padding=2)
    assert grid.shape == (2 + rows * (8 + 2), 2 + cols * (6 + 2)) and grid.dtype == np.uint8


def test_tiles_land_in_row_major_order_inside_padding() -> None:
    grid = make_grid(_images(5), nrow=3, padding=1, pad_value=255)
    for k in range(5):
        row, col = divmod(k, 3)
        top, left = 1 + row * 9, 1 + col * 7
        assert (grid[top : top + 8, left : left + 6] == 10 * (k + 1)).all()
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()
    assert (grid[10:, 15:] == 255).all()  # the empty sixth slot is padding


def test_no_padding_is_plain_tiling() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 3, 5), dtype=np.uint8)
    grid = make_grid(images, padding=0)
    expected = np.block([[images[0, 0], images[1, 0]], [images[2, 0], images[3, 0]]])
    np.testing.assert_array_equal(grid, expected)


def test_rgb_grid_keeps_channels() -> None:
    grid = make_grid(_images(4, c=3), padding=2)
    assert grid.shape == (2 + 2 * 10, 2 + 2 * 8, 3)
    np.testing.assert_array_equal(grid[2, 2], [10, 11, 12])
    np.testing.assert_array_equal(grid[12, 10], [40, 41, 42])


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        (_images(2).astype(np.float32), {}, "uint8"),
        ([[1, 2]], {}, "uint8"),
        (_images(2)[:, 0], {}, r"\(N, C, H, W\)"),
        (np.zeros((2, 2, 4, 4), np.uint8), {}, "C = 1 or 3"),
        (np.zeros((0, 1, 4, 4), np.uint8), {}, "N >= 1"),
        (_images(2), {"nrow": 0}, "nrow"),
        (_images(2), {"padding": -1}, "padding"),
        (_images(2), {"pad_value": 256}, "pad_value"),
    ],
)
def test_bad_input_is_a_user_error(images: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        make_grid(images, **kwargs)


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip(tmp_path: Path, channels: int) -> None:
    images = np.random.default_rng(channels).integers(0, 256, (7, channels, 5, 4), dtype=np.uint8)
    path = save_grid(images, tmp_path / "deep" / "er" / "grid.png", nrow=3)
    assert path == tmp_path / "deep" / "er" / "grid.png"
    with Image.open(path) as png:
        assert png.format == "PNG" and png.mode == ("L" if channels == 1 else "RGB")
        np.testing.assert_array_equal(np.asarray(png), make_grid(images, nrow=3))
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temp file left


def test_scale_is_nearest_neighbour(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    path = save_grid(images, str(tmp_path / "digits.png"), padding=1, scale=4)
    with Image.open(path) as png:
        pixels = np.asarray(png)
    small = make_grid(images, padding=1)
    assert pixels.shape == (small.shape[0] * 4, small.shape[1] * 4)
    np.testing.assert_array_equal(pixels, np.kron(small, np.ones((4, 4), np.uint8)))


def test_save_overwrites_and_rejects_bad_scale(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    save_grid(_images(4), path)
    save_grid(_images(1), path)
    with Image.open(path) as png:
        assert png.size == (2 + 6 + 2, 2 + 8 + 2)
    for scale in (0, 1.5):
        with pytest.raises(UserError, match="scale"):
            save_grid(_images(1), path, scale=scale)
