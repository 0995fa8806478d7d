"""Export forms of Glow's affine coupling and Gaussian prior: the same maps
in fewer, cheaper nodes.

The trained layers (gentrain/models/glow/layers.py) compute the coupling's
log-scale in log space (log-sigmoid, logaddexp: finite however far x lies
from the data, and exact inverses) and interleave shift and scale channels
(h[:, 0::2], h[:, 1::2], as openai/glow). With a scale floor f > 0 the scale
s = f + (1 - f) sigmoid(h + 2) lies in [f, 1], so s itself, 1 / s and log s
are all well conditioned, and the export can use them directly:

    inverse  x_b = y_b / s - shift          forward  y_b = (x_b + shift) s
    log|det| = sum log s

Each ActNorm after a convolution and the zero-initialised output layer's
exp(3 logs) are folded into the convolutions' weights and biases (in
float64), and the output channels are permuted so that shift and scale are
two contiguous halves. On this CPU (benchmarks/results/throughput-cpu.md)
that took OpenVINO's Glow generate graph from 0.70x to 0.86x of ONNX
Runtime's time in float32, and its bf16 run from 1.27x to 2.0x faster than
ONNX Runtime float32: strided slices and a dozen element-wise ops per
coupling on 2- to 8-channel tensors cost more than the convolutions there.
ONNX Runtime's own time is unchanged. The parity checks compare the engine
with the trained model, so the two forms are held to each other.

A coupling without a floor (checkpoints from before it, f = 0) or an
additive one keeps its trained form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gentrain.models.glow.layers import (
    ActNorm,
    AffineCoupling,
    GaussianStandardize,
    ZeroConv2d,
    add_class_bias,
)
from gentrain.models.transforms import Transform


def fuse_couplings(module: nn.Module) -> nn.Module:
    """Replace, in place, every affine coupling with a floor and every
    Gaussian prior of `module` (a frozen copy) with its export form."""
    for name, child in list(module.named_children()):
        if isinstance(child, AffineCoupling) and not child.additive:
            if float(child.scale_floor) > 0:
                setattr(module, name, FusedCoupling(child))
        elif isinstance(child, GaussianStandardize):
            setattr(module, name, FusedPrior(child))
        else:
            fuse_couplings(child)
    return module


def _constant(module: nn.Module, name: str, value: torch.Tensor) -> None:
    module.register_buffer(name, value.float().contiguous())


def _conv_then_norm(conv: nn.Conv2d, norm: ActNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv(x) + b) e^s as one convolution: W e^s, (bias + b) e^s."""
    scale = torch.exp(norm.logs.detach().double()).flatten()
    weight = conv.weight.detach().double() * scale[:, None, None, None]
    bias = norm.bias.detach().double().flatten()
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double()
    return weight, bias * scale


def _halves(zero: ZeroConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-initialised layer conv(x) e^(3 logs) with its interleaved
    output channels (even: shift or mean, odd: scale or log-scale) reordered
    into two contiguous halves."""
    scale = torch.exp(3 * zero.logs.detach().double()).flatten()
    weight = zero.conv.weight.detach().double() * scale[:, None, None, None]
    bias = zero.conv.bias.detach().double() * scale
    channels = weight.shape[0]
    order = [*range(0, channels, 2), *range(1, channels, 2)]
    return weight[order], bias[order]


class FusedCoupling(Transform):
    """AffineCoupling (with a floor) under the Transform contract."""

    def __init__(self, coupling: AffineCoupling) -> None:
        super().__init__()
        net = coupling.net
        self.split = coupling.split
        self.floor = float(coupling.scale_floor)
        for i, (weight, bias) in enumerate(
            (
                _conv_then_norm(net.conv1, net.norm1),
                _conv_then_norm(net.conv2, net.norm2),
                _halves(net.out),
            )
        ):
            _constant(self, f"weight{i}", weight)
            _constant(self, f"bias{i}", bias)
        self.paddings = (net.conv1.padding, net.conv2.padding, net.out.conv.padding)
        # Class couplings: each per-class bias lands after its layer's ActNorm,
        # so it adds to the folded layer's output as it is.
        bias = net.class_bias
        self.register_buffer("class_bias", None if bias is None else bias.detach().float())

    def _shift_scale(
        self, x_a: torch.Tensor, label: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.conv2d(x_a, self.weight0, self.bias0, padding=self.paddings[0])
        h = F.relu(add_class_bias(h, self.class_bias, 0, label))
        h = F.conv2d(h, self.weight1, self.bias1, padding=self.paddings[1])
        h = F.relu(add_class_bias(h, self.class_bias, 1, label))
        h = F.conv2d(h, self.weight2, self.bias2, padding=self.paddings[2])
        shift, raw = h.chunk(2, dim=1)
        return shift, self.floor + (1.0 - self.floor) * torch.sigmoid(raw + 2.0)

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, scale = self._shift_scale(x_a, context)
        y_b = (x_b + shift) * scale
        return torch.cat([x_a, y_b], 1), torch.log(scale).flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        shift, scale = self._shift_scale(y_a, context)
        x_b = y_b / scale - shift
        return torch.cat([y_a, x_b], 1), -torch.log(scale).flatten(1).sum(1)


class FusedPrior(GaussianStandardize):
    """GaussianStandardize with its conditioning layer's halves contiguous
    (its forward and inverse are the trained class's)."""

    def __init__(self, prior: GaussianStandardize) -> None:
        Transform.__init__(self)
        self.channels = prior.channels
        self.prior = None
        self.learned = prior.prior is None
        if self.learned:
            _constant(self, "mean", prior.mean.detach())
            _constant(self, "logs", prior.logs.detach())
        else:
            weight, bias = _halves(prior.prior)
            _constant(self, "weight", weight)
            _constant(self, "bias", bias)
            self.padding = prior.prior.conv.padding

    def _split(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        if self.learned:
            return x, None, self.mean, self.logs
        z, h = x[:, : self.channels], x[:, self.channels :]
        mean, logs = F.conv2d(h, self.weight, self.bias, padding=self.padding).chunk(2, dim=1)
        return z, h, mean, logs
