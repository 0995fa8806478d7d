"""Glow's invertible layers, one class each, under the toolkit's one flow
contract (`gentrain/models/transforms.py`, as in nflows):

    forward(x) -> (y, logabsdet)      data -> latent
    inverse(y) -> (x, logabsdet)      latent -> data, logabsdet = -forward's

A flow step is a `CompositeTransform` of three of them, which sums their
log-dets; no layer keeps a running total.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..stable import log_sigmoid
from ..transforms import CompositeTransform, Transform, class_rows, per_item


class ActNorm(Transform):
    """Per-channel affine y = (x + bias) * exp(logs), initialised from the first
    batch it sees so that the output has zero mean and unit variance per channel.

    `initialized` is a buffer, so a loaded checkpoint does not re-initialise.
    """

    def __init__(self, channels: int, scale: float = 1.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = scale
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(self.scale / (std + 1e-6)))
        self.initialized.fill_(True)

    def _params(
        self, x: torch.Tensor, context=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shift, log-scale, log|det| (N,)) for the items of x."""
        return self.bias, self.logs, per_item(x.shape[2] * x.shape[3] * self.logs.sum(), x)

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.initialized and self.training:
            self.initialize(x)
        bias, logs, logabsdet = self._params(x, context)
        return (x + bias) * torch.exp(logs), logabsdet

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        bias, logs, logabsdet = self._params(y, context)
        return y * torch.exp(-logs) - bias, -logabsdet


class ClassActNorm(ActNorm):
    """ActNorm whose shift and log-scale also depend on the class (a
    conditional Glow's `class_actnorm`): y = (x + bias + bias_y) exp(logs +
    logs_y), with a learned (bias_y, logs_y) per class and channel, zero at
    the start; the data-dependent initialisation is the shared part's. The
    context is the label int64 (N,) or class weights (N, K)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(channels)
        self.class_bias = nn.Parameter(torch.zeros(num_classes, channels))
        self.class_logs = nn.Parameter(torch.zeros(num_classes, channels))

    def _params(
        self, x: torch.Tensor, context=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shift, log-scale) of each item's class and the log|det| (N,)."""
        if context is None:
            raise ValueError("a class ActNorm needs the class label")
        bias = self.bias + class_rows(self.class_bias, context)[:, :, None, None]
        logs = self.logs + class_rows(self.class_logs, context)[:, :, None, None]
        return bias, logs, x.shape[2] * x.shape[3] * logs.flatten(1).sum(1)


class InvConv1x1(Transform):
    """Invertible 1x1 convolution: y[:, :, i, j] = W x[:, :, i, j].

    With `lu=True` (the default, as in the Glow paper) W = P L (U + diag(s))
    is kept in LU form so log|det W| = sum(log|s|) costs O(C) instead of O(C^3).
    """

    def __init__(self, channels: int, lu: bool = True) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.lu = lu
        if not lu:
            self.weight = nn.Parameter(q)
            return
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("p", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def weight_and_logabsdet(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The matrix W and log|det W| (used here and baked in by the exporter)."""
        if not self.lu:
            return self.weight, torch.linalg.slogdet(self.weight)[1]
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.p @ lower @ upper, self.log_s.sum()

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        weight, logabsdet = self.weight_and_logabsdet()
        y = F.conv2d(x, weight.unsqueeze(-1).unsqueeze(-1))
        return y, per_item(x.shape[2] * x.shape[3] * logabsdet, x)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        weight, logabsdet = self.weight_and_logabsdet()
        inverse = torch.inverse(weight.double()).to(y.dtype)
        x = F.conv2d(y, inverse.unsqueeze(-1).unsqueeze(-1))
        return x, per_item(-y.shape[2] * y.shape[3] * logabsdet, y)


class ZeroConv2d(nn.Module):
    """3x3 convolution initialised to zero, with a learned per-channel output
    scale exp(3 * logs): the last layer of every coupling network and prior, so
    each flow step starts as the identity (Glow, section 3.3)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.logs * 3)


class CouplingNet(nn.Module):
    """The coupling's network NN(x_a): conv3x3 -> ActNorm -> ReLU -> conv1x1 ->
    ActNorm -> ReLU -> ZeroConv3x3. ActNorm replaces batch norm (Glow).

    With `num_classes` K > 0 (a conditional Glow's class couplings) the label
    also enters: a learned bias per class and hidden channel is added to each
    hidden layer (after its ActNorm, before the ReLU; zero at the start), so
    every coupling's shift and scale depend on the class, not only the prior."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, num_classes: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, out_channels)
        nn.init.normal_(self.conv1.weight, std=0.05)
        nn.init.normal_(self.conv2.weight, std=0.05)
        # (2, K, hidden): the first and the second hidden layer's biases per class.
        self.class_bias = nn.Parameter(torch.zeros(2, num_classes, hidden)) if num_classes else None

    def forward(self, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(self.conv1(x))[0]  # ActNorm's log-det is not needed here
        h = F.relu(add_class_bias(h, self.class_bias, 0, label))
        h = self.norm2(self.conv2(h))[0]
        return self.out(F.relu(add_class_bias(h, self.class_bias, 1, label)))


def add_class_bias(
    h: torch.Tensor, class_bias: torch.Tensor | None, layer: int, label: torch.Tensor | None
) -> torch.Tensor:
    """A coupling network's hidden layer `layer` plus its class's bias (class
    couplings: `class_bias` (2, K, hidden)); h as it is without them. Shared
    by CouplingNet and the exported FusedCoupling."""
    if class_bias is None:
        return h
    if label is None:
        raise ValueError("a coupling with class couplings needs the class label")
    return h + class_rows(class_bias[layer], label)[:, :, None, None]


# The least scale s an affine coupling can take (docs/training-safety.md). Without
# a floor, s = sigmoid(h + 2) reaches 1e-30 where a barely trained network meets
# a latent far from the data, and the reverse x = y / s overflows: hundreds of
# non-finite samples in 1024 after 100 steps. With it each coupling's reverse
# amplifies by at most 1 / SCALE_FLOOR.
SCALE_FLOOR = 0.05


class AffineCoupling(Transform):
    """Split channels (x_a, x_b); x_a passes through, x_b -> (x_b + t) * s with
    (h, t) = NN(x_a) and s = f + (1 - f) sigmoid(h + 2), f = SCALE_FLOOR: starts
    near the identity and keeps the forward map contracting, which keeps
    training stable, and s >= f keeps the reverse finite. log s is computed in
    log space (log-sigmoid, logaddexp), so it is finite however far x lies from
    the data, and both directions use the same log s: exact inverses.
    `additive=True` drops s (NICE-style, volume preserving)."""

    def __init__(
        self, channels: int, hidden: int, additive: bool = False, num_classes: int = 0
    ) -> None:
        super().__init__()
        self.additive = additive
        self.split = channels // 2
        out = channels - self.split
        self.net = CouplingNet(self.split, out if additive else 2 * out, hidden, num_classes)
        if not additive:
            # A buffer, so checkpoints carry it: one trained without (f = 0) reloads as trained.
            self.register_buffer("scale_floor", torch.tensor(SCALE_FLOOR))

    def upgrade_state_dict(self, state_dict: dict, prefix: str) -> None:
        """Fill what a checkpoint from before the floor lacks (f = 0: as trained).
        The checkpoint loader calls it before checking the weights' names."""
        if not self.additive and prefix + "scale_floor" not in state_dict:
            state_dict[prefix + "scale_floor"] = torch.tensor(0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _shift_log_scale(
        self, x_a: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.net(x_a, label)
        if self.additive:
            return h, None
        # Interleaved channels (shift = even, raw scale = odd), as in openai/glow.
        # log s = log(f + (1 - f) sigmoid(h + 2)); log f = -inf (no floor) is exact too.
        floor = self.scale_floor
        log_scale = torch.logaddexp(
            torch.log(floor), torch.log1p(-floor) + log_sigmoid(h[:, 1::2] + 2.0)
        )
        return h[:, 0::2], log_scale

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        shift, log_scale = self._shift_log_scale(x_a, context)
        if log_scale is None:
            return torch.cat([x_a, x_b + shift], 1), x.new_zeros(x.shape[0])
        y_b = (x_b + shift) * torch.exp(log_scale)
        return torch.cat([x_a, y_b], 1), log_scale.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        shift, log_scale = self._shift_log_scale(y_a, context)
        if log_scale is None:
            return torch.cat([y_a, y_b - shift], 1), y.new_zeros(y.shape[0])
        x_b = y_b * torch.exp(-log_scale) - shift
        return torch.cat([y_a, x_b], 1), -log_scale.flatten(1).sum(1)


class FlowStep(CompositeTransform):
    """One Glow step: ActNorm -> invertible 1x1 conv -> coupling (`self.layers`).
    The context (a class label) reaches every layer; the class ActNorm and a
    coupling with `num_classes` use it, the others ignore it."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        lu: bool = True,
        additive: bool = False,
        num_classes: int = 0,
        class_actnorm: bool = False,
    ):
        norm = ClassActNorm(channels, num_classes) if class_actnorm else ActNorm(channels)
        super().__init__(
            [
                norm,
                InvConv1x1(channels, lu),
                AffineCoupling(channels, hidden, additive, num_classes),
            ]
        )


class Squeeze(Transform):
    """(C, H, W) -> (4C, H/2, W/2), stacking each 2x2 neighbourhood in channels
    so the next 1x1 convolution mixes former spatial neighbours (a permutation:
    log|det| = 0)."""

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        x = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(n, c * 4, h // 2, w // 2), x.new_zeros(n)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = y.shape
        y = y.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // 4, h * 2, w * 2), y.new_zeros(n)


class GaussianStandardize(Transform):
    """The prior of a level's factored-out latent as an invertible layer on the
    whole level: its first `channels` channels z -> eps = (z - mu) / sigma, the
    rest (h, the channels the next level keeps) pass through unchanged and
    predict (mu, log sigma) (a split prior, Glow section 3); at the top level
    (`cond_channels` None) every channel is z and (mu, log sigma) are learned
    outright. log p(z | h) = log N(eps; 0, I) + log|d eps/dz|, so each level's
    latent is standard-normal noise: generation takes noise in, density hands
    noise out, and a round trip through both is exact.
    """

    def __init__(self, channels: int, cond_channels: int | None, shape: tuple[int, int]):
        super().__init__()
        self.channels = channels
        if cond_channels is None:
            self.prior = None
            self.mean = nn.Parameter(torch.zeros(1, channels, *shape))
            self.logs = nn.Parameter(torch.zeros(1, channels, *shape))
        else:
            self.prior = ZeroConv2d(cond_channels, 2 * channels)

    def _split(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """x -> (z, h, mean, logs); h is None at the top level."""
        if self.prior is None:
            return x, None, self.mean, self.logs
        z, h = x[:, : self.channels], x[:, self.channels :]
        out = self.prior(h)
        return z, h, out[:, 0::2], out[:, 1::2]

    @staticmethod
    def _join(z: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        return z if h is None else torch.cat([z, h], 1)

    def forward(self, x: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        z, h, mean, logs = self._split(x)
        eps = (z - mean) * torch.exp(-logs)
        return self._join(eps, h), -logs.expand_as(z).flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        eps, h, mean, logs = self._split(y)
        z = mean + torch.exp(logs) * eps
        return self._join(z, h), logs.expand_as(eps).flatten(1).sum(1)
