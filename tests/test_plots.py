"""`gentrain plot` and `gentrain figures`: every picture kind writes a PNG of
its fixed size from tiny checkpoints trained a few steps on the digits; the
pictures' numbers are right (the manifold's inverse-CDF grid, a flow's
interpolation ending on its own round trip, PCA keeping distances); a model
that cannot make a picture gets a one-line error naming what it can make; and
the lecture's whole pipeline runs end to end in its smoke mode."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from PIL import Image

from gentrain.cli import main
from gentrain.models import build_model
from gentrain.models.quantization import dequantize, quantize
from gentrain.plots import PlotInputs, make_plot
from gentrain.plots.codes import _to_plane
from gentrain.plots.interpolation import STEPS, _flow_path
from gentrain.train import TrainConfig, Trainer

cli = InProcessCli(main, "gentrain")

TINY = {
    "ae": {"latent_dim": 2, "hidden": 16},
    "vae": {"latent_dim": 2, "hidden": 16},
    "vae3": {"latent_dim": 3, "hidden": 16},
    "glow": {"depth": 1, "hidden": 8, "n_bits": 5},
    "realnvp": {"hidden": 8, "blocks": 1, "n_bits": 5},
    "hvae": {"hidden": 8, "groups": 3},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, digits):
    """name -> checkpoint.pt of a tiny model trained 3 steps on the digits."""
    paths = {}
    for name, options in TINY.items():
        family = name.rstrip("3")
        torch.manual_seed(0)
        model = build_model(family, {"data_shape": digits.shape, **options})
        config = TrainConfig(data="digits", steps=3, batch_size=32, eval_every=3, device="cpu")
        out = tmp_path_factory.mktemp(name)
        Trainer(model, digits, config, out).fit()
        paths[name] = out / "checkpoint.pt"
    return paths


# (kind, checkpoints, extra options, (width, height) at 100 dpi)
PICTURES = [
    ("reconstructions", ["vae"], [], (720, 400)),
    ("reconstructions", ["ae", "vae"], [], (1080, 400)),
    ("latent-scatter", ["ae", "vae"], [], (1100, 500)),
    ("latent-scatter", ["vae3"], ["--project", "pca"], (550, 500)),
    ("manifold", ["vae"], [], (800, 840)),
    ("manifold", ["ae"], [], (800, 840)),
    ("interpolation", ["vae"], [], (1000, 600)),
    ("interpolation", ["glow"], [], (1000, 600)),
    ("interpolation", ["realnvp"], ["--n", "2"], (1000, 600)),
    ("temperature", ["glow"], [], (800, 800)),
    ("temperature", ["vae"], ["--n", "4"], (800, 800)),
    ("hvae-levels", ["hvae"], ["--n", "9"], (1080, 400)),
]


@pytest.mark.parametrize(("kind", "names", "options", "size"), PICTURES)
def test_every_kind_writes_a_png_of_its_size(checkpoints, tmp_path, kind, names, options, size):
    out = tmp_path / "picture.png"
    code, stdout, stderr = cli.run(
        "plot", kind, *[checkpoints[n] for n in names], *options, "--out", out
    )
    assert code == 0, stderr
    assert f"wrote {kind}" in stdout
    with Image.open(out) as image:
        assert image.size == size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something drawn, not a blank canvas


def test_models_that_cannot_make_a_picture_get_one_line_errors(checkpoints, tmp_path):
    out = tmp_path / "x.png"
    ckpt = checkpoints
    cli.assert_one_line_error(
        cli.run("plot", "latent-scatter", ckpt["glow"], "--out", out),
        "the Glow checkpoint can make: interpolation, temperature",
    )
    cli.assert_one_line_error(
        cli.run("plot", "latent-scatter", ckpt["vae3"], "--out", out), "pass --project pca"
    )
    cli.assert_one_line_error(
        cli.run("plot", "manifold", ckpt["vae3"], "--out", out), "train one with --latent 2"
    )
    cli.assert_one_line_error(
        cli.run("plot", "temperature", ckpt["ae"], "--out", out),
        "the AE checkpoint can make: reconstructions, latent-scatter, manifold, interpolation",
    )
    cli.assert_one_line_error(
        cli.run("plot", "hvae-levels", ckpt["vae"], "--out", out), "latent groups to hold fixed"
    )
    cli.assert_one_line_error(
        cli.run("plot", "manifold", ckpt["vae"], ckpt["ae"], "--out", out), "takes 1 checkpoint"
    )
    cli.assert_one_line_error(cli.run("plot", "pie", ckpt["vae"], "--out", out), "unknown plot")
    cli.assert_one_line_error(
        cli.run("plot", "latent-scatter", ckpt["vae"], "--project", "tsne", "--out", out),
        "unknown projection",
    )
    assert not out.exists()


class GridRecorder(torch.nn.Module):
    """A 2-D code model with a standard-normal prior that records what it decodes."""

    prior = None  # has a prior: the manifold uses the inverse Gaussian CDF

    def encode_mean(self, x):
        return torch.zeros(len(x), 2)

    def decode_mean(self, z):
        self.decoded = z.clone()
        return torch.zeros(len(z), 1, 8, 8, dtype=torch.uint8)


def test_manifold_decodes_the_inverse_gaussian_cdf_of_an_even_grid(digits, tmp_path):
    model = GridRecorder()
    make_plot("manifold", [("stub", model)], digits.test, tmp_path / "m.png", n=4)
    z = model.decoded.view(4, 4, 2)  # rows top to bottom, columns left to right
    want = torch.tensor([-1.1503, -0.3186, 0.3186, 1.1503])  # Phi^-1(1/8, 3/8, 5/8, 7/8)
    torch.testing.assert_close(z[0, :, 0], want, atol=1e-4, rtol=0)  # z1 grows to the right
    torch.testing.assert_close(z[:, 0, 1], want.flip(0), atol=1e-4, rtol=0)  # z2 grows upwards


@pytest.mark.parametrize("family", ["glow", "realnvp"])
def test_flow_interpolation_ends_on_the_images_round_trip(checkpoints, digits, family):
    from gentrain.checkpoint import load_checkpoint, model_from_checkpoint

    flow = model_from_checkpoint(load_checkpoint(checkpoints[family]))
    inputs = PlotInputs([(family, flow)], digits.test, n=3, seed=0)
    index = inputs.pick(6)
    xa, xb = inputs.images(index[:3]), inputs.images(index[3:])
    with torch.no_grad():
        path = _flow_path(flow, xa, xb, torch.linspace(0, 1, STEPS))
    assert path.shape == (3, STEPS, 1, 8, 8)
    # Forward then reverse is the identity: the ends are the images at 5 bits.
    assert torch.equal(path[:, 0], quantize(dequantize(xa, 5), 5))
    assert torch.equal(path[:, -1], quantize(dequantize(xb, 5), 5))
    assert not torch.equal(path[:, 1], path[:, 0])


def test_pca_projection_keeps_distances_of_planar_codes():
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(50, 2)) * [3.0, 1.0]
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    codes = np.c_[plane, np.zeros(50)] @ rotation.T + 5.0  # a tilted, shifted plane in 3-D
    points, names = _to_plane(codes, "pca", "test")
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    want = np.linalg.norm(plane[:, None] - plane[None], axis=-1)
    np.testing.assert_allclose(distances, want, atol=1e-9)
    assert names[0].startswith("PC 1 (") and "100%" not in names[1]


def test_figures_end_to_end_writes_every_picture_and_the_index(tmp_path):
    out = tmp_path / "figures"
    args = ["figures", "--data", "digits", "--out", out, "--smoke", "--test-images", "40"]
    code, stdout, stderr = cli.run(*args)
    assert code == 0 and f"index: {out / 'index.md'}" in stdout, stderr
    index = (out / "index.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", index)
    expected = {
        "reconstructions.png",
        "latent-scatter.png",
        "manifold-vae.png",
        "manifold-ae.png",
        "interpolation-vae.png",
        "temperature-glow.png",
        "interpolation-glow.png",
        "hvae-levels.png",
    }
    assert set(linked) == expected
    assert {p.name for p in out.glob("*.png")} == expected
    assert all((out / name).stat().st_size > 1000 for name in linked)
    for label in ("AE", "VAE", "Glow", "HVAE"):  # each model's row: steps and figures
        row = next(line for line in index.splitlines() if line.startswith(f"| {label} ("))
        assert "| 3 |" in row and "+-" in row
    assert (out / "runs" / "glow" / "checkpoint.pt").is_file()
    cli.assert_one_line_error(cli.run(*args), "already holds files")
