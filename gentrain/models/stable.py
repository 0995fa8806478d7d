"""Numerically stable pieces that export to ONNX as they run in PyTorch.

`F.logsigmoid` is stable in PyTorch but the ONNX exporter writes it as
Log(Sigmoid(x)), which is -inf once sigmoid underflows (x below about -88 in
float32): an engine would then disagree with its checkpoint, one side
infinite. Written out from elementary operations, the same formula holds in
both.
"""

from __future__ import annotations

import torch


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log(1 / (1 + e^-x)) = min(x, 0) - log(1 + e^-|x|): finite for every finite x."""
    return torch.clamp(x, max=0.0) - torch.log1p(torch.exp(-torch.abs(x)))
