"""A class-conditional model's pictures: samples of every class across
temperatures (one row per class), and interpolation between two classes: every
class parameter (the conditional prior's and, with class couplings, the
coupling networks' biases) mixed by a soft one-hot label."""

from __future__ import annotations

import torch

from ..models.quantization import quantize
from .canvas import new_figure, show_images
from .inputs import PlotInputs, class_names, is_flow

TEMPERATURES = (0.0, 0.5, 0.7, 1.0)
STEPS = 8  # pictures from one class to the other, both ends included
MAX_ROWS = 16  # classes (or class pairs) drawn at most


def class_temperature(inputs: PlotInputs):
    """One panel per temperature, one row per class, n samples per row; the
    same noise in every row and panel, so a column differs only in its class
    (and its temperature)."""
    (label, model), n = inputs.models[0], inputs.n
    classes = min(model.num_classes, MAX_ROWS)
    fig, axes = new_figure(2.4 * len(TEMPERATURES), 1.0 + 0.3 * classes, 1, len(TEMPERATURES))
    for ax, temperature in zip(axes[0], TEMPERATURES, strict=True):
        rows = []
        for c in range(classes):
            torch.manual_seed(inputs.seed)  # the same noise for every class
            rows.append(model.sample(n, temperature, label=c))
        show_images(ax, torch.cat(rows).cpu().numpy(), n, f"T = {temperature}")
    names = class_names(model)[:classes]
    fig.suptitle(f"{label}: samples of classes {', '.join(names)} (one row each) by temperature")
    return fig


def class_interpolation(inputs: PlotInputs):
    """n rows, class c to class c + 1: the class parameters mixed with weights
    0 .. 1 (a soft one-hot label), at one noise draw per row and the model's
    default temperature."""
    (label, model), n = inputs.models[0], min(inputs.n, MAX_ROWS)
    k = model.num_classes
    pairs = [(row % k, (row + 1) % k) for row in range(n)]
    weights = torch.linspace(0, 1, STEPS)
    mix = torch.zeros(n, STEPS, k)
    for row, (a, b) in enumerate(pairs):
        mix[row, :, a] += 1 - weights
        mix[row, :, b] += weights
    torch.manual_seed(inputs.seed)
    images = _sample_rows(model, mix.flatten(0, 1).to(model.device), n)
    fig, axes = new_figure(8.0, 0.8 + 0.9 * n)
    names = class_names(model)
    title = "rows: " + ", ".join(f"{names[a]} -> {names[b]}" for a, b in pairs)
    show_images(axes[0, 0], images.cpu().numpy(), STEPS, title)
    fig.suptitle(
        f"{label}: interpolation between classes (their parameters mixed) "
        f"(T = {model.default_temperature}, one noise draw per row)"
    )
    return fig


def _sample_rows(model, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """uint8 images of `labels` (class weights), `rows` noise draws each
    shared by its row's len(labels) // rows images."""
    width, temperature = len(labels) // rows, model.default_temperature
    if is_flow(model):
        noise = [z.repeat_interleave(width, 0) for z in model.noise(rows, model.device)]
        return quantize(model.reverse(noise, temperature, labels), model.config.n_bits)
    z = model.prior.sample(rows, temperature, device=model.device)
    return model.decode_mean(z.repeat_interleave(width, 0), labels)
