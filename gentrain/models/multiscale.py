"""What every multi-scale flow shares (Glow, RealNVP): the map from continuous
images to standard-normal noise per level and back, the change of variables,
dequantised bits/dim for training and evaluation, and sampling.

A family builds `self.levels`, each a `FlowLevel`: a composite of invertible
layers (the flow contract, `transforms.py`) whose output's first `split`
channels are that level's latent, the rest what the next level transforms.
Every prior is folded into its level, so the flow maps data y to noise
eps_1 .. eps_L with

    log p(y) = sum_l log N(eps_l; 0, I) + log|det d(eps)/dy|

and sampling is reverse(T * eps) with eps ~ N(0, I) and temperature T. The
config provides `n_bits`, `num_dims` and `latent_shapes()`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .base import GenerativeModel, Objective
from .quantization import bits_per_dim, dequantize, discretization_nats, quantize
from .transforms import ClassStandardize, CompositeTransform


class FlowLevel(CompositeTransform):
    """One scale of a multi-scale flow, the contract Glow's and RealNVP's share:
    a composite transform (its layers, prior included, in `transforms()`) of
    the level's input, after which the first `split` channels are the level's
    standard-normal latent and the other `out_channels` go on to the next
    level at half the resolution. At the `top` level every channel is latent."""

    top: bool
    split: int  # channels factored out as this level's latent
    out_channels: int  # channels handed to the next level


def log_normal(eps: torch.Tensor, dims: int = 1) -> torch.Tensor:
    """log N(eps; 0, I), summed over all but the first `dims` axes."""
    return (-0.5 * (eps**2 + math.log(2 * math.pi))).flatten(dims).sum(dims)


class MultiScaleFlow(GenerativeModel):
    """A conditional flow (`num_classes` K > 0) adds a `ClassStandardize`
    per level after the levels (`class_priors`). Where the levels ignore the
    label (the prior-only form), log p(y|c) differs between classes only
    there, so log p(y|c) for every c costs one pass through the levels; a
    flow whose levels take the label too (`levels_take_label`: Glow's class
    couplings and class ActNorm) passes each image once per class
    (`class_log_probs`)."""

    headline_metric = "bpd"

    @property
    def levels_take_label(self) -> bool:
        """Whether the levels themselves depend on the class, not only the
        priors (a family whose levels can take it says when: Glow)."""
        return False

    def stack_levels(self, count: int, make: Callable[[int, tuple[int, int], bool], nn.Module]):
        """`self.levels` from `make(channels, (height, width), top)`: each level
        hands its `out_channels` on at half the resolution (it squeezes 2x2);
        and a conditional flow's class layers, one per level's latent."""
        c, h, w = self.config.data_shape
        levels = []
        for i in range(count):
            level = make(c, (h, w), i == count - 1)
            levels.append(level)
            c, h, w = level.out_channels, h // 2, w // 2
        self.levels = nn.ModuleList(levels)
        if self.num_classes:
            self.class_priors = nn.ModuleList(
                ClassStandardize(self.num_classes, shape) for shape in self.config.latent_shapes()
            )

    # -- the flow ---------------------------------------------------------
    def forward(
        self, y: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Continuous images y -> (standard-normal latents per level, log|det|);
        a conditional flow's given the class `label` (int64 (N,))."""
        latents, logabsdet = self.levels_forward(y, label)
        if not self.num_classes:
            return latents, logabsdet
        steps = [layer(u, label) for layer, u in zip(self.class_priors, latents, strict=True)]
        eps = [step[0] for step in steps]
        return eps, logabsdet + torch.stack([step[1] for step in steps]).sum(0)

    def levels_forward(
        self, y: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """y -> (each level's latent, log|det|) through the levels: the model's
        latents, or a conditional flow's before its class layers (`label`
        reaches the levels where they take it). Each level's latent is
        factored out of its output, the rest goes on."""
        latents, total = [], None
        h = y
        context = label if self.levels_take_label else None
        for level in self.levels:
            x, logabsdet = level(h, context)
            if level.top:
                latents.append(x)
            else:
                latents.append(x[:, : level.split])
                h = x[:, level.split :]
            total = logabsdet if total is None else total + logabsdet
        return latents, total

    def reverse(
        self,
        latents: list[torch.Tensor],
        temperature: float | torch.Tensor = 1.0,
        label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Standard-normal latents per level -> continuous images (of the class
        `label`, for a conditional flow). A tensor temperature of shape (N,)
        gives each sample its own; it scales the standard-normal noise."""
        if isinstance(temperature, torch.Tensor):
            temperature = temperature.view(-1, 1, 1, 1)
        h = None
        context = label if self.levels_take_label else None
        for i in reversed(range(len(self.levels))):
            eps = latents[i] * temperature
            if self.num_classes:
                eps, _ = self.class_priors[i].inverse(eps, label)
            h, _ = self.levels[i].inverse(eps if h is None else torch.cat([eps, h], 1), context)
        return h

    def log_prob(self, y: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """log p(y) in nats per image, for continuous y in [-0.5, 0.5); a
        conditional flow's log p(y | label)."""
        return self.log_prob_of(*self(y, label))

    def class_log_probs(self, y: torch.Tensor) -> torch.Tensor:
        """A conditional flow's log p(y | c) for every class c: (N, K) nats,
        from one pass through the levels; where the levels take the label,
        from one pass of N K rows (each image under every class)."""
        if self.levels_take_label:
            k = self.num_classes
            rows = y[:, None].expand(-1, k, *y.shape[1:]).reshape(-1, *y.shape[1:])
            labels = torch.arange(k, device=y.device)[None].expand(y.shape[0], k).reshape(-1)
            return self.log_prob(rows, labels).view(-1, k)
        latents, logabsdet = self.levels_forward(y)
        total = logabsdet[:, None]
        for layer, u in zip(self.class_priors, latents, strict=True):
            eps, class_logabsdet = layer.every_class(u)
            total = total + log_normal(eps, 2) + class_logabsdet
        return total

    @staticmethod
    def log_prob_of(latents: list[torch.Tensor], logdet: torch.Tensor) -> torch.Tensor:
        """log p(y) from what `forward(y)` returned: the change of variables."""
        return sum(log_normal(eps) for eps in latents) + logdet

    # -- the GenerativeModel contract --------------------------------------
    def objective(self, x: torch.Tensor, label: torch.Tensor | None = None) -> Objective:
        """Mean bits/dim of the dequantised images (a conditional flow's of
        p(x|label)). With `class_weight` w > 0 a conditional flow also learns
        to classify with its own densities: loss = bpd + w * bits_y, bits_y =
        -log2 p(label|x) per image, p(y|x) = p(x|y) p(y) / sum_y' p(x|y') p(y')
        from the same pass (a hybrid generative-discriminative objective, as
        openai/glow's ycond with weight_y, there from a separate classifier head)."""
        label = self.check_label(label, len(x))
        y = dequantize(x, self.config.n_bits, torch.rand(x.shape, device=x.device))
        n_bits, dims = self.config.n_bits, self.config.num_dims
        weight = getattr(self.config, "class_weight", 0.0) if label is not None else 0.0
        if not weight:
            bpd = bits_per_dim(self.log_prob(y, label), dims, n_bits).mean()
            return Objective(bpd, {"bpd": bpd.item()})
        by_class = self.class_log_probs(y)
        bpd = bits_per_dim(by_class.gather(1, label[:, None])[:, 0], dims, n_bits).mean()
        posterior = torch.log_softmax(by_class + self.log_class_prior(), 1)
        bits_y = -posterior.gather(1, label[:, None]).mean() / math.log(2)
        loss = bpd + weight * bits_y
        return Objective(loss, {"bpd": bpd.item(), "bits_y": bits_y.item()})

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, iw_samples: int = 1, label: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """bpd: with one draw of uniform dequantisation noise, the variational
        bound papers report; nll: -log P(x) in nats from it; with iw_samples
        K > 1 also bpd_iw: the importance-weighted bound
        log P(x) >= log (1/K) sum_k p(y_k) 2^(-n_bits D), u_k ~ U[0,1)^D,
        tighter as K grows. These bound -log P(x) >= 0 of the discrete image,
        so a draw's estimate below 0 is raised to 0. bpd_density_at_centers:
        the density at bin centres, deterministic, NOT a bound (negative for
        images simpler than the data, e.g. all black).

        A conditional flow's are those of P(x | label), and also bpd_marginal:
        the bound of P(x) = sum_y P(x|y) p(y) from the same draw, and accuracy:
        1 where the generative classifier argmax_y p(x|y) p(y) (densities at
        the bin centres, as `genrun classify`) names the label, else 0."""
        label = self.check_label(label, len(x))
        n_bits, dims = self.config.n_bits, self.config.num_dims
        ys = [
            dequantize(x, n_bits, torch.rand(x.shape, device=x.device)) for _ in range(iw_samples)
        ]
        center = dequantize(x, n_bits)
        metrics = {}
        if label is None:
            draws = [self.log_prob(y) for y in ys]
            log_center = self.log_prob(center)
        else:
            log_prior = self.log_class_prior()
            by_class = self.class_log_probs(ys[0])
            draws = [by_class.gather(1, label[:, None])[:, 0]]
            draws += [self.log_prob(y, label) for y in ys[1:]]
            marginal = torch.logsumexp(by_class + log_prior, 1)
            metrics["bpd_marginal"] = bits_per_dim(marginal, dims, n_bits).clamp(min=0)
            at_centers = self.class_log_probs(center)
            log_center = at_centers.gather(1, label[:, None])[:, 0]
            metrics["accuracy"] = ((at_centers + log_prior).argmax(1) == label).float()
        metrics = {
            "bpd": bits_per_dim(draws[0], dims, n_bits).clamp(min=0),
            "bpd_density_at_centers": bits_per_dim(log_center, dims, n_bits),
            "nll": (discretization_nats(dims, n_bits) - draws[0]).clamp(min=0),
            **metrics,
        }
        if iw_samples > 1:
            log_mean = torch.logsumexp(torch.stack(draws), 0) - math.log(iw_samples)
            metrics["bpd_iw"] = bits_per_dim(log_mean, dims, n_bits).clamp(min=0)
        return metrics

    def noise(self, n: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Standard-normal latents for n samples, from the global torch RNG."""
        return [torch.randn(n, *shape, device=device) for shape in self.config.latent_shapes()]

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, label: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        label = self.check_label(label, n)
        device = next(self.parameters()).device
        y = self.reverse(self.noise(n, device), temperature, label)
        return quantize(y, self.config.n_bits)
