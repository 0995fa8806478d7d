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


def class_rows(table: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Each item's row of a per-class table (K, ...): label int64 (N,) picks
    one, class weights (N, K) mix them (a soft label, as ClassStandardize)."""
    if label.is_floating_point():
        return (label @ table.flatten(1)).view(-1, *table.shape[1:])
    return table[label]


class ClassStandardize(Transform):
    """The class-conditional part of a flow's prior, as an affine layer on one
    level's latent u: eps = (u - mean_y) exp(-logs_y), with a learned mean and
    log-scale per class and position (zero at the start: the unconditional
    prior). The context is the class label, int64 (N,) (or class weights
    (N, K), a mix of classes). With the level's own
    prior before it, u ~ N(mean_y, exp(2 logs_y)) in the standardised space:
    the per-class mean and log-scale of Kingma & Dhariwal 2018 (section 3,
    openai/glow's `ycond`), for the top latent and every factored-out one.

    It sits outside the flow so that, without class couplings, log p(x|y) for
    every class costs one flow pass and one of these per class (the generative
    classifier, p(x)); a flow with class couplings depends on y itself and
    takes one pass per class."""

    def __init__(self, num_classes: int, shape: Sequence[int]) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(num_classes, *shape))
        self.logs = nn.Parameter(torch.zeros(num_classes, *shape))

    def _of(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logs) of each item's class; for class weights (N, K) instead
        of labels, their mix (a soft label: between two classes it
        interpolates in the conditional prior)."""
        return class_rows(self.mean, context), class_rows(self.logs, context)

    def forward(
        self, inputs: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logs = self._of(context)
        return (inputs - mean) * torch.exp(-logs), -logs.flatten(1).sum(1)

    def inverse(
        self, inputs: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logs = self._of(context)
        return mean + torch.exp(logs) * inputs, logs.flatten(1).sum(1)

    def every_class(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` for every class at once: u (N, ...) -> (eps (N, K, ...),
        logabsdet (K,)), eps[:, k] and logabsdet[k] being forward's for label k."""
        eps = (inputs[:, None] - self.mean[None]) * torch.exp(-self.logs[None])
        return eps, -self.logs.flatten(1).sum(1)
