"""What every exported graph declares: the `Graph` record that the exporter,
the verifier and the manifest read, whatever the family."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from genrun.manifest import BATCH, TensorSpec

__all__ = ["BATCH", "Graph", "nats_per_bpd"]


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


def nats_per_bpd(num_dims: int) -> float:
    """Nats per image that one bit/dim is: tolerances in nats scale with it."""
    return num_dims * math.log(2.0)
