"""What every exported graph declares: the `Graph` record that the exporter,
the verifier and the manifest read, whatever the family."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genrun.manifest import BATCH, LABEL, TensorSpec

__all__ = ["BATCH", "Builder", "Graph", "class_cycle", "label_feeds", "label_input", "nats_per_bpd"]


@dataclass
class Graph:
    """One role of one model: the module to export, the reference module
    (the trained model itself), its tensors, how to draw seeded inputs, and
    which kind of tolerance each output is checked with."""

    role: str
    module: nn.Module
    reference: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sample_inputs: Callable[[int, torch.Generator], tuple[torch.Tensor, ...]]
    checks: dict[str, str]  # output name -> "image", "bpd", "nats", "latent" or "pixels"
    num_dims: int  # D, pixels per image
    pixel_bits: int  # the uint8 outputs take 2^pixel_bits levels
    # How the sampling temperature acts (the manifest's `temperature`), or None
    # when the role does not sample from a prior.
    temperature: str | None = None


# One function per role: (trained model, fold ActNorm into 1x1 convs) -> Graph.
# `fold` matters to Glow only; the others ignore it.
Builder = Callable[[nn.Module, bool], Graph]


def nats_per_bpd(num_dims: int) -> float:
    """Nats per image that one bit/dim is: tolerances in nats scale with it."""
    return num_dims * math.log(2.0)


def class_cycle(classes: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n labels int64 that take every class in turn from a seeded start: the
    labels a conditional graph's parity is checked with (each class in a
    batch of `classes` or more)."""
    start = int(torch.randint(0, classes, (1,), generator=generator))
    return (torch.arange(n) + start) % classes


def label_input(classes: int, what: str) -> list[TensorSpec]:
    """A conditional graph's "label" input (of `classes` classes, one per
    `what`: sample or image); none for an unconditional graph (0 classes)."""
    if not classes:
        return []
    text = f"class of each {what}, 0..{classes - 1} (the manifest's classes)"
    return [TensorSpec(LABEL, "int64", [BATCH], text)]


def label_feeds(classes: int, n: int, generator: torch.Generator) -> tuple:
    """A conditional graph's labels for n seeded inputs (`class_cycle`), ()
    for an unconditional graph."""
    return (class_cycle(classes, n, generator),) if classes else ()
