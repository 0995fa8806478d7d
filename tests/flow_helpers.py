"""`assert_invertible`: the one check every flow layer passes (Glow's and
RealNVP's layers, the split priors, the VAE's posterior flows)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch


def assert_invertible(
    layer: torch.nn.Module | Callable,
    x: torch.Tensor,
    *,
    tol: float = 1e-4,
    logdet_tol: float = 1e-6,
    **kwargs: torch.Tensor,
) -> None:
    """Check that `layer` is an invertible map with an exact log-determinant.

    `layer(x, logdet, reverse=False, **kwargs) -> (y, logdet)` (the nflows
    convention of the Glow and RealNVP layers): the reverse of the forward
    gives x back within `tol`, with the log-dets cancelling within `tol`.
    Any layer, also one without a closed-form reverse (planar and radial
    posterior flows, passed as `lambda z: flow(z, params)`): the log|det|
    it reports for the first item equals that of its full Jacobian from
    autograd in float64 within `logdet_tol`, and that Jacobian is nonsingular.

    The layer (a module) is converted to float64 for the Jacobian check;
    tensors in `kwargs` (a split prior's `h`) are cut to the first item.
    """
    takes_reverse = "reverse" in inspect.signature(layer).parameters
    if takes_reverse:
        y, logdet = layer(x, torch.zeros(len(x), dtype=x.dtype), **kwargs)
        x_back, logdet_back = layer(y, logdet, reverse=True, **kwargs)
        assert (x_back - x).abs().max() < tol, (x_back - x).abs().max()
        assert logdet_back.abs().max() < tol, logdet_back.abs().max()

    if isinstance(layer, torch.nn.Module):
        layer.double()
    one = x[:1].double()
    first = {name: value[:1].double() for name, value in kwargs.items()}
    if takes_reverse:
        forward = lambda v: layer(v, None, **first)[0]  # noqa: E731
        logdet_one = layer(one, torch.zeros(1, dtype=torch.float64), **first)[1]
    else:
        forward = lambda v: layer(v)[0]  # noqa: E731
        logdet_one = layer(one)[1]
    jacobian = torch.autograd.functional.jacobian(forward, one).reshape(one.numel(), one.numel())
    sign, expected = torch.linalg.slogdet(jacobian)
    assert sign != 0, "the Jacobian is singular: the map is not invertible here"
    assert abs(logdet_one.item() - expected.item()) < logdet_tol, (logdet_one, expected)
