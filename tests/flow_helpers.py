"""`assert_invertible`: the one check every transform passes (Glow's and
RealNVP's layers, steps and levels, the priors, the class-conditional prior,
the VAE's posterior flows)."""

from __future__ import annotations

from typing import Any

import torch

from gentrain.models.transforms import InverseNotAvailable, Transform


def _first(context: Any) -> Any:
    """The context of the first item, in float64 where it is a float tensor."""
    if not isinstance(context, torch.Tensor):
        return context
    first = context[:1]
    return first.double() if first.is_floating_point() else first


def assert_invertible(
    transform: Transform,
    x: torch.Tensor,
    context: Any = None,
    *,
    tol: float = 1e-4,
    logdet_tol: float = 1e-6,
) -> None:
    """Check that `transform` is an invertible map with an exact log-determinant,
    under the flow contract: forward(x, context) -> (y, logabsdet) and
    inverse(y, context) -> (x, logabsdet of the inverse).

    Where there is a closed-form inverse: it gives x back within `tol` and the
    two log-dets cancel within `tol`. Always (also for the planar and radial
    posterior flows, which have none): the log|det| the transform reports for
    the first item equals that of its full Jacobian from autograd in float64
    within `logdet_tol`, and that Jacobian is nonsingular. The transform is
    converted to float64 for the Jacobian check; a tensor context is cut to
    the first item.
    """
    y, logdet = transform(x, context)
    assert logdet.shape == x.shape[:1], f"logabsdet has shape {tuple(logdet.shape)}, not (N,)"
    try:
        x_back, logdet_back = transform.inverse(y, context)
    except InverseNotAvailable:
        pass
    else:
        assert (x_back - x).abs().max() < tol, (x_back - x).abs().max()
        assert (logdet + logdet_back).abs().max() < tol, (logdet + logdet_back).abs().max()

    transform.double()
    one, first = x[:1].double(), _first(context)
    jacobian = torch.autograd.functional.jacobian(lambda v: transform(v, first)[0], one)
    sign, expected = torch.linalg.slogdet(jacobian.reshape(one.numel(), one.numel()))
    assert sign != 0, "the Jacobian is singular: the map is not invertible here"
    logdet_one = transform(one, first)[1]
    assert abs(logdet_one.item() - expected.item()) < logdet_tol, (logdet_one, expected)


def assert_marginal_matches_pytorch(
    marginal_path: Any, checkpoint: Any, images: Any, atol: float = 5e-3
) -> tuple[Any, Any, Any]:
    """A conditional flow's marginal engine: log P(x) is the logsumexp of its
    log P(x|y) + log p(y) columns, and each column is PyTorch's
    `class_log_probs` (bin centres, in nats per image). Returns (the engine,
    its log P(x|y) columns, PyTorch's) for further checks."""
    import math

    import numpy as np

    from genrun.engine import load
    from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
    from gentrain.models.quantization import dequantize

    marginal = load(marginal_path, threads=1)
    out = marginal.run(images=images)
    log_prior = np.array([c.log_prior for c in marginal.manifest.classes])
    by_class = out["class_log_likelihood"].astype(np.float64)
    expected = np.logaddexp.reduce(by_class + log_prior, axis=1)
    np.testing.assert_allclose(out["log_likelihood"], expected, rtol=1e-5)
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    n_bits = model.config.n_bits
    with torch.no_grad():
        reference = model.class_log_probs(dequantize(torch.from_numpy(images), n_bits)).numpy()
    nats = int(np.prod(images.shape[1:])) * n_bits * math.log(2)
    np.testing.assert_allclose(by_class, reference - nats, atol=atol)
    return marginal, by_class, reference
