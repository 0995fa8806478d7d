"""Hierarchical VAE in the NVAE style (Vahdat & Kautz 2020): L groups of
spatial latents z_1 (top, coarsest) ... z_L, a bottom-up encoder tower and a
top-down tower that the decoder and the prior share.

    p(z_1) = N(0, I),   p(z_l | z_<l) = N(mu_l, sigma_l^2)  from the top-down state
    q(z_l | x, z_<l) = N(mu_l + dmu_l, (sigma_l * dsigma_l)^2)   (residual parameterisation)

dmu, dsigma come from the top-down state and the bottom-up feature of x at
group l's resolution. With z_l = mu_q + sigma_q * eps_l:

    log w(x, eps) = log p(x|z) + sum_l [log p(z_l | z_<l) - log q(z_l | x, z_<l)]
    ELBO(x)       = E[log p(x|z)] - sum_l E_{q(z_<l|x)}[KL(q(z_l | x, z_<l) || p(z_l | z_<l))]

the KL of each group in closed form given the drawn z_<l (the lecture's
NVAE slide). Training weighs the KL by beta, which rises from 0 to 1 over
`kl_warmup` steps; the step count is a buffer, so checkpoints carry it and a
resumed run continues the warm-up exactly. All noise is drawn outside
`log_weight` and `generate`, so both are deterministic and exportable.

Left out from NVAE: spectral regularisation, KL balancing between groups,
the depthwise-separable decoder cell, normalising flows in the posterior and
channel growth between resolutions (one width throughout).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from genrun.errors import UserError
from genrun.manifest import ELBO, GENERATE

from ..base import GenerativeModel, Objective
from ..importance import ImportanceWeighted
from ..quantization import means_to_uint8
from ..vae.likelihoods import LOG_2PI, Likelihood, build_likelihood
from .cells import cell_stack, downsample, upsample
from .config import HVAEConfig

LATENT_DIMS = (-3, -2, -1)
LOG_SIGMA_BOUND = 5.0


def soft_clamp(log_sigma: torch.Tensor) -> torch.Tensor:
    """Smoothly bounds a log std to (-5, 5), as NVAE does: an early large
    step cannot make a sigma overflow or vanish."""
    return LOG_SIGMA_BOUND * torch.tanh(log_sigma / LOG_SIGMA_BOUND)


class Normal:
    """Diagonal Gaussian over spatial latents (..., C, H, W); `log_prob` and
    `kl` sum over one latent, returning a number per sample."""

    def __init__(self, mu: torch.Tensor, log_sigma: torch.Tensor) -> None:
        self.mu, self.log_sigma = mu, log_sigma

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """The reparameterisation z = mu + sigma * eps."""
        return self.mu + torch.exp(self.log_sigma) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        scaled = (z - self.mu) * torch.exp(-self.log_sigma)
        return (-0.5 * (LOG_2PI + scaled**2) - self.log_sigma).sum(LATENT_DIMS)

    def kl(self, other: Normal) -> torch.Tensor:
        """KL(self || other) = 1/2 sum (r^2 + ((mu - mu_o) / sigma_o)^2 - 1 - log r^2),
        r = sigma / sigma_o: in the residual parameterisation r = dsigma and
        mu - mu_o = dmu, NVAE's equation (2)."""
        log_ratio = self.log_sigma - other.log_sigma
        shift = (self.mu - other.mu) * torch.exp(-other.log_sigma)
        return 0.5 * (torch.exp(2 * log_ratio) + shift**2 - 1 - 2 * log_ratio).sum(LATENT_DIMS)


def _gaussian_head(channels_in: int, latent_channels: int) -> nn.Module:
    """Features -> (mu, log sigma) of a group's latent, as 2 * latent_channels maps."""
    return nn.Sequential(nn.SiLU(), nn.Conv2d(channels_in, 2 * latent_channels, 3, padding=1))


def _split(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, log_sigma = params.chunk(2, dim=1)
    return mu, soft_clamp(log_sigma)


class BottomUp(nn.Module):
    """The encoder tower: x -> one feature map per group, at that group's
    resolution. It runs from the last (finest) group to the first, so z_1's
    feature has seen the whole tower."""

    def __init__(self, config: HVAEConfig) -> None:
        super().__init__()
        self.levels = config.group_levels()
        self.stem = nn.Conv2d(config.data_shape[0], config.hidden, 3, padding=1)
        self.down = nn.ModuleList(downsample(config.hidden) for _ in range(self.levels[0]))
        self.cells = nn.ModuleList(
            cell_stack(config.hidden, config.cells) for _ in range(config.groups)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, level = self.stem(x), 0
        features = []
        for group in reversed(range(len(self.levels))):
            while level < self.levels[group]:
                h, level = self.down[level](h), level + 1
            h = self.cells[group](h)
            features.append(h)
        return features[::-1]


class TopDown(nn.Module):
    """The decoder tower, shared by the prior and the posterior: a learned
    initial state, then per group the prior p(z_l | z_<l), the posterior's
    residual (dmu, dsigma) and a combiner that folds z_l into the state; at
    the end the likelihood's parameters at full resolution."""

    def __init__(self, config: HVAEConfig, likelihood: Likelihood) -> None:
        super().__init__()
        ch, groups, levels = config.hidden, config.groups, config.group_levels()
        _, height, width = config.data_shape
        self.levels = levels
        self.initial = nn.Parameter(torch.zeros(1, ch, height >> levels[0], width >> levels[0]))
        # up[i] takes the state from level levels[0] - i to the next finer one.
        self.up = nn.ModuleList(upsample(ch, ch) for _ in range(levels[0] - levels[-1]))
        # Group 0's prior is N(0, I): cells and a prior head only for groups 1..L-1.
        self.cells = nn.ModuleList(cell_stack(ch, config.cells) for _ in range(groups - 1))
        self.prior_heads = nn.ModuleList(
            _gaussian_head(ch, config.latent_channels) for _ in range(groups - 1)
        )
        self.posterior_heads = nn.ModuleList(
            _gaussian_head(2 * ch, config.latent_channels) for _ in range(groups)
        )
        self.combiners = nn.ModuleList(
            nn.Conv2d(ch + config.latent_channels, ch, 1) for _ in range(groups)
        )
        channels = config.data_shape[0]
        finest = levels[-1]
        to_pixels: list[nn.Module] = [cell_stack(ch, config.cells)]
        to_pixels += [upsample(ch, ch if j > 1 else channels) for j in range(finest, 0, -1)]
        if finest == 0:
            to_pixels += [nn.SiLU(), nn.Conv2d(ch, channels, 3, padding=1)]
        self.to_pixels = nn.Sequential(*to_pixels)
        self.likelihood = likelihood
        # mu = log sigma = 0 of the top prior N(0, I), broadcast against z_1. A
        # buffer exports as a constant tensor, which float16 conversion handles.
        self.register_buffer("origin", torch.zeros(()), persistent=False)

    def start(self, n: int) -> torch.Tensor:
        """The state before group 0, the same learned map for every sample."""
        return self.initial.expand(n, -1, -1, -1)

    def enter(self, group: int, state: torch.Tensor) -> torch.Tensor:
        """The state on reaching `group`: up to its resolution, then its cells."""
        if group == 0:
            return state
        top = self.levels[0]
        for i in range(top - self.levels[group - 1], top - self.levels[group]):
            state = self.up[i](state)
        return self.cells[group - 1](state)

    def prior(self, group: int, state: torch.Tensor) -> Normal:
        """p(z_l | z_<l); N(0, I) for the top group."""
        if group == 0:
            return Normal(self.origin, self.origin)
        return Normal(*_split(self.prior_heads[group - 1](state)))

    def posterior(
        self, group: int, state: torch.Tensor, feature: torch.Tensor, prior: Normal
    ) -> Normal:
        """q(z_l | x, z_<l) = N(mu_p + dmu, (sigma_p * dsigma)^2)."""
        dmu, log_dsigma = _split(self.posterior_heads[group](torch.cat([state, feature], 1)))
        return Normal(prior.mu + dmu, prior.log_sigma + log_dsigma)

    def absorb(self, group: int, state: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The state after z_l: a 1x1 convolution of [state, z_l] (NVAE's combiner)."""
        return self.combiners[group](torch.cat([state, z], 1))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """The final state -> raw likelihood parameters (N, C, H, W)."""
        return self.to_pixels(state)


class HVAE(ImportanceWeighted, GenerativeModel):
    family = "hvae"
    roles = (GENERATE, ELBO)
    graphs = "genexport.graphs.hvae"
    label = "HVAE"
    description = (
        "a hierarchical VAE (NVAE-style, Vahdat & Kautz 2020); reports the test negative "
        "ELBO in nats and each group's KL"
    )
    default_iw_samples = 1000
    iwae_chunk = 2048  # a top-down pass costs more than the VAE's decoder
    # The VAE's settings plus a short warm-up and clipping: early steps of a
    # hierarchy with batch norm can spike before the KL warm-up settles them.
    train_defaults: ClassVar = {
        "optimizer": "adam",
        "lr": 2e-3,
        "batch_size": 32,
        "warmup": 100,
        "clip": 100.0,
        "epochs": 30,
    }
    config_class = HVAEConfig
    headline_metric = "nelbo"

    def __init__(self, config: HVAEConfig) -> None:
        super().__init__(config)
        self.encoder = BottomUp(config)
        self.decoder = TopDown(config, build_likelihood(config))
        # Training steps seen, for the KL warm-up: a buffer, so it is checkpointed.
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))

    def kl_weight(self) -> float:
        """beta of the training loss: train_step / kl_warmup, capped at 1."""
        warmup = self.config.kl_warmup
        return 1.0 if warmup == 0 else min(1.0, self.train_step.item() / warmup)

    def _infer(
        self, x: torch.Tensor, eps: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """One pass through q(z|x) and p(x, z) at the draws z_l = mu_q + sigma_q * eps_l.

        x (N, C, H, W) float; eps_l (..., N, C_l, H_l, W_l), leading dimensions
        (e.g. K importance samples) shared by every group. Returns
        -log p(x|z), the closed-form KL of each group and each group's
        log q(z_l | x, z_<l) - log p(z_l | z_<l), each (..., N)."""
        lead = tuple(eps[0].shape[:-4])
        copies = math.prod(lead)
        features = [f.repeat(copies, 1, 1, 1) for f in self.encoder(x)]
        state = self.decoder.start(features[0].shape[0])
        kls, log_ratios = [], []
        for group, (feature, noise) in enumerate(zip(features, eps, strict=True)):
            state = self.decoder.enter(group, state)
            prior = self.decoder.prior(group, state)
            posterior = self.decoder.posterior(group, state, feature, prior)
            z = posterior.sample(noise.reshape(-1, *noise.shape[-3:]))
            kls.append(posterior.kl(prior).reshape(*lead, -1))
            log_ratios.append((posterior.log_prob(z) - prior.log_prob(z)).reshape(*lead, -1))
            state = self.decoder.absorb(group, state, z)
        params = self.decoder(state)
        rec = -self.decoder.likelihood.log_prob(x, params.reshape(*lead, *x.shape))
        return rec, kls, log_ratios

    def log_weight(self, x: torch.Tensor, eps: list[torch.Tensor]) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) at the draws given by eps (one
        tensor per group), no random ops inside. x (N, C, H, W) float,
        eps_l (..., N, C_l, H_l, W_l) -> (..., N)."""
        rec, _, log_ratios = self._infer(x, eps)
        return -(rec + torch.stack(log_ratios).sum(0))

    def generate(
        self, eps: list[torch.Tensor], temperature: float | torch.Tensor = 1.0
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Ancestral sampling from the prior, no random ops inside:
        z_l = mu_l + sigma_l * T * eps_l. eps_l (N, C_l, H_l, W_l); temperature
        a number or per sample (N, 1, 1, 1). Returns the likelihood's raw
        parameters (N, C, H, W) and the latents z_1 ... z_L."""
        state = self.decoder.start(eps[0].shape[0])
        latents = []
        for group, noise in enumerate(eps):
            state = self.decoder.enter(group, state)
            z = self.decoder.prior(group, state).sample(temperature * noise)
            latents.append(z)
            state = self.decoder.absorb(group, state, z)
        return self.decoder(state), latents

    def _noise(self, *lead: int) -> list[torch.Tensor]:
        """Standard-normal eps for every group, with leading dimensions `lead`."""
        return [torch.randn(*lead, *s, device=self.device) for s in self.config.latent_shapes()]

    def objective(self, x: torch.Tensor) -> Objective:
        """Mean of -log p(x|z) + beta * sum_l KL_l in nats per image, one fresh
        draw. The metrics report the true negative ELBO (beta = 1) and each
        group's KL. A training step (train mode, gradients on) advances the
        warm-up; evaluation and the trainer's no-grad init pass do not."""
        x = self.to_float(x)
        rec, kls, _ = self._infer(x, self._noise(len(x)))
        kl = torch.stack(kls).sum(0)
        beta = self.kl_weight()
        if self.training and torch.is_grad_enabled():
            self.train_step.add_(1)
        loss = (rec + beta * kl).mean()
        metrics = {
            "nelbo": (rec + kl).mean().item(),
            "rec": rec.mean().item(),
            "kl": kl.mean().item(),
            **{f"kl_{group}": term.mean().item() for group, term in enumerate(kls)},
            "beta": beta,
        }
        return Objective(loss=loss, metrics=metrics)

    @torch.no_grad()
    def evaluate(
        self, x: torch.Tensor, iw_samples: int | None = None, chunk: int = 2048
    ) -> dict[str, torch.Tensor]:
        """Per-image test metrics (N,) of uint8 images, all in nats but bpd:
        nelbo = rec + kl (beta = 1) with each group's closed-form KL at one
        draw, and the importance-sampled nll with K = iw_samples."""
        rec, kls, _ = self._infer(self.to_float(x), self._noise(len(x)))
        kl = torch.stack(kls).sum(0)
        nll = -self.iwae_bound(x, iw_samples or self.default_iw_samples, chunk)
        per_group = {f"kl_{group}": term for group, term in enumerate(kls)}
        bpd = self.bits_per_dim(nll)
        return {"nelbo": rec + kl, "rec": rec, "kl": kl, **per_group, "nll": nll, "bpd": bpd}

    @torch.no_grad()
    def sample_with_latents(
        self, n: int, temperature: float = 1.0, fixed_levels: int = 0
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """n decoder means as uint8 and their latents z_1 ... z_L. The first
        `fixed_levels` groups take one noise draw shared by every sample, so
        with 1 all samples share z_1, with 2 also z_2. Runs in eval mode
        (BatchNorm's running statistics), whatever mode the model is in."""
        if not 0 <= fixed_levels <= self.config.groups:
            raise UserError(
                f"fixed_levels must be from 0 to {self.config.groups} (the model's groups), "
                f"got {fixed_levels}"
            )
        shapes = self.config.latent_shapes()
        eps = [
            torch.randn(1 if group < fixed_levels else n, *shape, device=self.device).expand(
                n, *shape
            )
            for group, shape in enumerate(shapes)
        ]
        was_training = self.training
        self.eval()
        params, latents = self.generate(eps, temperature)
        self.train(was_training)
        return means_to_uint8(self.decoder.likelihood.mean(params)), latents

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, fixed_levels: int = 0) -> torch.Tensor:
        """n decoder means (probabilities for Bernoulli) as uint8 (n, C, H, W)."""
        return self.sample_with_latents(n, temperature, fixed_levels)[0]
