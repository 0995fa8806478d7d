"""The one contract of every invertible map in the toolkit (as in
bayesiains/nflows `transforms/base.py`): Glow's and RealNVP's layers, their
flow steps and levels, the priors folded into them and the VAE's posterior
flows.

    forward(inputs, context=None) -> (outputs, logabsdet)    data -> noise
    inverse(inputs, context=None) -> (outputs, logabsdet)    noise -> data

`logabsdet` is log|det d outputs / d inputs| per item: shape (N,) (or the
inputs' leading dimensions, for the posterior flows' (K, N, k) samples);
`inverse` returns that of the inverse map, so a round trip sums to zero.
`context` conditions the map: a posterior flow's per-image parameters, a
class label. A layer never adds to a running total: a `CompositeTransform`
sums its layers' log-dets in one place (`cascade`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

Step = tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], Any]


class InverseNotAvailable(NotImplementedError):
    """The map is invertible but has no closed-form inverse (planar, radial)."""


class Transform(nn.Module):
    """An invertible map with a tractable log|det J| (see the module's docstring)."""

    def forward(
        self, inputs: torch.Tensor, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def inverse(
        self, inputs: torch.Tensor, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise InverseNotAvailable(f"{type(self).__name__} has no closed-form inverse")


def cascade(inputs: torch.Tensor, steps: Iterable[Step]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `(transform method, context)` steps in order, each on the last one's
    outputs: the outputs and the sum of the steps' log-dets. The one place a
    flow's log-determinants add up."""
    total = None
    for function, context in steps:
        inputs, logabsdet = function(inputs, context)
        total = logabsdet if total is None else total + logabsdet
    if total is None:  # no steps: the identity
        total = inputs.new_zeros(inputs.shape[0])
    return inputs, total


class CompositeTransform(Transform):
    """Transforms run in order going forward and in reverse order going back;
    log-dets summed by `cascade`. Each layer sees the same context unless a
    subclass hands each its own (`contexts`). A subclass that keeps its layers
    under other names (so that checkpoints keep their weights' names)
    overrides `transforms()` instead of passing them in."""

    def __init__(self, transforms: Iterable[Transform] | None = None) -> None:
        super().__init__()
        if transforms is not None:
            self.layers = nn.ModuleList(transforms)

    def transforms(self) -> Sequence[Transform]:
        """The layers, in the forward (data -> noise) order."""
        return self.layers

    def contexts(self, context: Any) -> list[Any]:
        """The context each layer gets, in the forward order."""
        return [context] * len(self.transforms())

    def forward(
        self, inputs: torch.Tensor, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        functions = [t.forward for t in self.transforms()]
        return cascade(inputs, zip(functions, self.contexts(context), strict=True))

    def inverse(
        self, inputs: torch.Tensor, context: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        functions = [t.inverse for t in self.transforms()]
        steps = zip(functions, self.contexts(context), strict=True)
        return cascade(inputs, reversed(list(steps)))


def per_item(value: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A log-det that is the same for every item (ActNorm's, a 1x1
    convolution's) as the contract's (N,) tensor."""
    return value.expand(inputs.shape[0])
