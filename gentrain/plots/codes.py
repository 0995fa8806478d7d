"""Pictures of a latent code (autoencoders and VAEs, through `encode_mean`
and `decode_mean`): reconstructions, the 2-D code of test images, and the
decoded manifold of Kingma & Welling (2014, figure 4)."""

from __future__ import annotations

import math

import numpy as np
import torch

from genrun.errors import UserError

from .canvas import new_figure, show_images
from .inputs import PlotInputs, codes_of


def reconstructions(inputs: PlotInputs):
    """Test images beside each model's reconstructions of the same images,
    titled with the lecture's MSE (per image, pixels in [0, 1])."""
    index = inputs.pick(inputs.n)
    x = inputs.images(index)
    panels = [("input test images", x.numpy())]
    for label, model in inputs.models:
        rebuilt = model.decode_mean(torch.from_numpy(codes_of(model, x))).cpu()
        mse = ((rebuilt.float() - x.float()) / 255).pow(2).flatten(1).sum(1).mean().item()
        panels.append((f"{label} output (MSE {mse:.1f})", rebuilt.numpy()))
    fig, axes = new_figure(3.6 * len(panels), 4.0, 1, len(panels))
    nrow = math.ceil(math.sqrt(len(index)))
    for ax, (title, images) in zip(axes[0], panels, strict=True):
        show_images(ax, images, nrow, title)
    return fig


def latent_scatter(inputs: PlotInputs):
    """Codes of n test images as points coloured by their label, one panel per model."""
    index = inputs.pick(inputs.n)
    x = inputs.images(index)
    labels = None if inputs.test.labels is None else inputs.test.labels[index]
    fig, axes = new_figure(5.5 * len(inputs.models), 5.0, 1, len(inputs.models))
    for ax, (label, model) in zip(axes[0], inputs.models, strict=True):
        codes = codes_of(model, x)
        points, axis_names = _to_plane(codes, inputs.project, label)
        _scatter(ax, points, labels)
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
        ax.set_title(f"{label}: code of {len(index)} test images (k = {codes.shape[1]})")
    return fig


def _to_plane(codes: np.ndarray, project: str, label: str) -> tuple[np.ndarray, list[str]]:
    k = codes.shape[1]
    if project == "none":
        if k != 2:
            raise UserError(
                f"the {label} code has k = {k} dimensions, not 2; pass --project pca "
                f"to plot its first two principal components"
            )
        return codes, ["$z_1$", "$z_2$"]
    if k < 2:
        raise UserError(f"the {label} code has k = {k}; PCA needs at least 2 dimensions")
    centred = codes - codes.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    share = singular**2 / max((singular**2).sum(), 1e-12)
    names = [f"PC {i + 1} ({100 * share[i]:.0f}% of the variance)" for i in range(2)]
    return centred @ vt[:2].T, names


def _scatter(ax, points: np.ndarray, labels: np.ndarray | None) -> None:
    """A legend entry per class for up to 10 classes, a colour bar beyond."""
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=10)
        return
    classes = np.unique(labels)
    if len(classes) > 10:
        dots = ax.scatter(points[:, 0], points[:, 1], c=labels, s=10, cmap="viridis")
        ax.figure.colorbar(dots, ax=ax, label="label")
        return
    for c in classes:
        chosen = labels == c
        ax.scatter(points[chosen, 0], points[chosen, 1], s=10, color=f"C{c % 10}", label=str(c))
    ax.legend(title="label", markerscale=1.5, fontsize="small", loc="best")


def manifold(inputs: PlotInputs):
    """An n x n grid of codes decoded. With a standard-normal prior the grid is
    evenly spaced quantiles u in (0, 1) pushed through the inverse Gaussian CDF
    (Kingma & Welling 2014, fig. 4); a plain autoencoder has no prior, so the
    same quantiles of its test codes are used instead."""
    (label, model), n = inputs.models[0], inputs.n
    k = codes_of(model, inputs.images(np.arange(1))).shape[1]
    if k != 2:
        raise UserError(
            f"manifold decodes a 2-D grid of codes but the {label} code has k = {k}; "
            f"train one with --latent 2, or plot latent-scatter --project pca"
        )
    quantiles = (np.arange(n) + 0.5) / n
    if hasattr(model, "prior"):
        axes_z = [torch.special.ndtri(torch.from_numpy(quantiles)).numpy()] * 2
        how = "inverse Gaussian CDF of an even grid"
    else:
        codes = codes_of(model, inputs.images(np.arange(len(inputs.test.images))))
        axes_z = [np.quantile(codes[:, j], quantiles) for j in range(2)]
        how = "quantiles of the test codes"
    z1, z2 = np.meshgrid(axes_z[0], axes_z[1][::-1])  # z2 grows upwards
    z = torch.from_numpy(np.stack([z1.ravel(), z2.ravel()], 1)).float()
    images = model.decode_mean(z).cpu().numpy()
    fig, axes = new_figure(8.0, 8.4)
    ax = axes[0, 0]
    show_images(ax, images, n, f"{label}: decoded grid of codes\n({how})")
    _tick_codes(ax, axes_z, n, images.shape[-1])
    return fig


def _tick_codes(ax, axes_z: list[np.ndarray], n: int, side: int) -> None:
    """Label a few tile centres with their code values (tiles are `side`
    pixels plus the grid's 1-pixel padding)."""
    columns = np.unique(np.linspace(0, n - 1, min(n, 5)).round().astype(int))
    centres = 1 + columns * (side + 1) + (side - 1) / 2
    ax.set_xticks(centres, [f"{v:.2f}" for v in axes_z[0][columns]])
    ax.set_yticks(centres, [f"{v:.2f}" for v in axes_z[1][::-1][columns]])
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
