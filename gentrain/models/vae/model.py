"""Variational autoencoder (Kingma & Welling 2014) with a Gaussian encoder
q(z|x) = N(mu(x), diag sigma^2(x)), a standard-normal prior p(z) and a
decoder likelihood p(x|z) chosen in the config.

Encoder, prior and decoder each expose `log_prob` and `sample`, so the bounds
read like the lecture's formulas. With z = mu + sigma * eps:

    log w(x, eps) = log p(x|z) + log p(z) - log q(z|x)
    ELBO(x)       = E_eps[log w] = E[log p(x|z)] - KL(q(z|x) || p(z))
    IWAE_K(x)     = E[logsumexp_k log w_k] - log K  <=  log p(x)

With a posterior flow (config.posterior_flow, Rezende & Mohamed 2015) z_0 =
mu + sigma * eps is pushed through K planar or radial layers whose parameters
the encoder also outputs, z = z_K, and log q(z|x) = log q_0(z_0|x) -
sum_k log|det J_k|; the KL then has only its Monte Carlo form.

A conditional VAE (--conditional; the concatenation CVAE of Sohn et al.
2015) models p(x|y) = E_{q(z|x,y)}[p(x|z,y) p(z) / q(z|x,y)] with the label
fed to the encoder and the decoder: a learned per-class bias after the first
layer of each network, which is concatenating a one-hot y to that layer's
input (exactly so for the linear layers; for the encoder's first
convolution, up to the zero padding at the border). The prior p(z) stays
N(0, I); classes differ only through the networks.

All noise is drawn outside `log_weight` with the global torch RNG, so that
function is deterministic and exportable.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from genrun.errors import UserError
from genrun.manifest import DECODE, ELBO, ENCODE

from ..base import GenerativeModel, Objective
from ..importance import ImportanceWeighted
from ..quantization import means_to_uint8
from .config import CLOSED_KL_WITH_FLOW, KL_ESTIMATORS, VAEConfig
from .likelihoods import LOG_2PI, Likelihood, build_likelihood
from .networks import build_networks
from .posterior_flows import PosteriorFlow, parse_posterior_flow


class LabelledNet(nn.Module):
    """A network that, given class labels, adds a learned per-class bias after
    its first layer (Linear or Conv2d): the one-hot label concatenated to that
    layer's input. `net` is kept as is (its weights keep their names)."""

    def __init__(self, net: nn.Sequential, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.cut, first = next(
            (i + 1, m) for i, m in enumerate(net) if isinstance(m, (nn.Linear, nn.Conv2d))
        )
        self.conv = isinstance(first, nn.Conv2d)
        width = first.out_channels if self.conv else first.out_features
        self.label_bias = nn.Parameter(torch.zeros(num_classes, width)) if num_classes else None

    def run(self, x: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """net(x), with label (N,) the class of x's rows. With labels, x may
        carry leading sample dimensions (..., N, features) in front of a
        Linear first layer; they fold into the batch after it."""
        if label is None:
            return self.net(x)
        h = self.net[: self.cut](x)
        # (N, width); class weights (N, K) mix the classes' biases (a soft one-hot).
        bias = label @ self.label_bias if label.is_floating_point() else self.label_bias[label]
        h = h + bias[:, :, None, None] if self.conv else (h + bias).reshape(-1, h.shape[-1])
        return self.net[self.cut :](h)


class GaussianEncoder(LabelledNet):
    """q(z|x) = N(z; mu(x), diag exp(logvar(x))); the network's outputs past
    the first 2k are the posterior flow's parameters, if any. A conditional
    VAE's is q(z|x, y)."""

    def __init__(self, net: nn.Module, latent_dim: int, num_classes: int = 0) -> None:
        super().__init__(net, num_classes)
        self.latent_dim = latent_dim

    def forward(
        self, x: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) in [0, 1] -> (mu, log sigma^2), each (N, k)."""
        return self.statistics(x, label)[:2]

    def statistics(
        self, x: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (mu, log sigma^2, posterior-flow parameters (N, P), P = 0 without a flow)."""
        out = self.run(x, label)
        k = self.latent_dim
        return out[:, :k], out[:, k : 2 * k], out[:, 2 * k :]

    @staticmethod
    def sample(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The reparameterisation z = mu + sigma * eps; eps may carry leading
        dimensions (e.g. K samples) in front of (N, k)."""
        return mu + torch.exp(0.5 * logvar) * eps

    @staticmethod
    def log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar)).sum(-1)

    @staticmethod
    def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) = 1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)."""
        return 0.5 * (mu**2 + torch.exp(logvar) - 1 - logvar).sum(-1)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I), nothing to learn."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def sample(self, n: int, temperature: float = 1.0, device=None) -> torch.Tensor:
        return temperature * torch.randn(n, self.latent_dim, device=device)


class Decoder(LabelledNet):
    """p(x|z): the network gives per-pixel parameters, the likelihood reads
    them; a conditional VAE's is p(x|z, y)."""

    def __init__(
        self, net: nn.Module, likelihood: Likelihood, latent_dim: int, num_classes: int = 0
    ) -> None:
        super().__init__(net, num_classes)
        self.likelihood = likelihood
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """z (..., N, k) -> likelihood parameters (..., N, C, H, W); label (N,)."""
        params = self.run(z if label is not None else z.reshape(-1, self.latent_dim), label)
        return params.reshape(*z.shape[:-1], *params.shape[1:])

    def log_prob(
        self, x: torch.Tensor, z: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.likelihood.log_prob(x, self(z, label))

    def sample(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.likelihood.sample(self(z, label))


class VAE(ImportanceWeighted, GenerativeModel):
    family = "vae"
    roles = (DECODE, ENCODE, ELBO)
    graphs = "genexport.graphs.vae"
    label = "VAE"
    description = "a VAE (Kingma & Welling 2014); reports the test negative ELBO in nats"
    default_iw_samples = 1000
    # Importance samples per class of a conditional VAE's marginal and classifier.
    class_iw_samples = 100
    # Small batches at 2e-3 beat the usual 128 at 1e-3 (benchmarks/results/vae-search.md).
    train_defaults: ClassVar = {"optimizer": "adam", "lr": 2e-3, "batch_size": 32, "epochs": 30}
    config_class = VAEConfig
    headline_metric = "nelbo"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        kind, count = parse_posterior_flow(config.posterior_flow)
        self.posterior_flow = PosteriorFlow(kind, count, config.latent_dim) if kind else None
        flow_params = self.posterior_flow.num_params if self.posterior_flow else 0
        encoder_net, decoder_net = build_networks(config, 2 * config.latent_dim + flow_params)
        classes = self.num_classes
        self.encoder = GaussianEncoder(encoder_net, config.latent_dim, classes)
        self.decoder = Decoder(decoder_net, build_likelihood(config), config.latent_dim, classes)
        self.prior = StandardNormalPrior(config.latent_dim)

    def encode(
        self, x: torch.Tensor, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images -> (mu, log sigma^2) of q(z|x) (a conditional VAE's
        q(z|x, label)), each (N, latent_dim); with a posterior flow, of its
        Gaussian base q_0(z_0|x)."""
        return self.encoder(x, label)

    def decode(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """z (..., N, latent_dim) -> raw likelihood parameters (..., N, C, H, W)
        (a conditional VAE's given label (N,)); `self.decoder.likelihood.mean`
        turns them into images in [0, 1]."""
        return self.decoder(z, label)

    def _elbo_terms(
        self, x: torch.Tensor, eps: torch.Tensor, kl: str, label: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(x|z), KL term) per image at z = mu + sigma * eps (then through
        the posterior flow, if any). The KL term is the closed form, or its
        one-sample estimate log q(z|x) - log p(z)."""
        mu, logvar, flow_params = self.encoder.statistics(x, label)
        z = self.encoder.sample(mu, logvar, eps)
        # log q(z|x) at z = mu + sigma * eps is -(log 2 pi + logvar + eps^2) / 2: no
        # exp(-logvar) of an unbounded logvar, so exported graphs stay finite too.
        log_q = -0.5 * (LOG_2PI + logvar + eps**2).sum(-1)
        if self.posterior_flow is not None:
            if kl == "closed":
                raise UserError(CLOSED_KL_WITH_FLOW)
            z, log_det = self.posterior_flow(z, flow_params)
            log_q = log_q - log_det
        rec = -self.decoder.log_prob(x, z, label)
        if kl == "closed":
            return rec, self.encoder.kl_to_standard_normal(mu, logvar)
        return rec, log_q - self.prior.log_prob(z)

    def log_weight(
        self, x: torch.Tensor, eps: torch.Tensor, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x) at z = mu + sigma * eps, no random
        ops inside (a conditional VAE's given label (N,)). x (N, C, H, W)
        float, eps (..., N, latent_dim) -> (..., N)."""
        rec, kl = self._elbo_terms(x, eps, "mc", label)
        return -(rec + kl)

    def _noise(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, self.config.latent_dim, device=self.device)

    def elbo(
        self, x: torch.Tensor, kl: str | None = None, label: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Single-sample ELBO per image (N,) of uint8 images; `kl` defaults to
        the config's estimator ("closed" or "mc")."""
        kl = kl or self.config.kl
        if kl not in KL_ESTIMATORS:
            raise UserError(f"unknown kl {kl!r}; use one of: {', '.join(KL_ESTIMATORS)}")
        label = self.check_label(label, len(x))
        x = self.to_float(x)
        rec, kl_term = self._elbo_terms(x, self._noise(len(x)), kl, label)
        return -(rec + kl_term)

    def objective(self, x: torch.Tensor, label: torch.Tensor | None = None) -> Objective:
        """Mean negative ELBO in nats per image, with a fresh reparameterisation draw."""
        label = self.check_label(label, len(x))
        x = self.to_float(x)
        rec, kl = self._elbo_terms(x, self._noise(len(x)), self.config.kl, label)
        loss = (rec + kl).mean()
        metrics = {"nelbo": loss.item(), "rec": rec.mean().item(), "kl": kl.mean().item()}
        return Objective(loss=loss, metrics=metrics)

    @torch.no_grad()
    def evaluate(
        self,
        x: torch.Tensor,
        iw_samples: int | None = None,
        label: torch.Tensor | None = None,
        chunk: int = 4096,
    ) -> dict[str, torch.Tensor]:
        """Per-image test metrics (N,) of uint8 images, all in nats but bpd:
        nelbo = rec + kl with the closed-form KL (one draw for rec; with a
        posterior flow the one-draw Monte Carlo KL), and the importance-sampled
        nll with K = iw_samples (an upper bound on -log p(x); default
        `default_iw_samples`).

        A conditional VAE's are those of p(x|label), and also, from the bound
        on log p(x|y) for every class y with min(K, `class_iw_samples`)
        samples: nll_marginal and bpd_marginal, the bound on -log p(x) =
        -log sum_y p(x|y) p(y), and accuracy: 1 where the generative
        classifier argmax_y p(x|y) p(y) names the label, else 0."""
        label = self.check_label(label, len(x))
        iw_samples = iw_samples or self.default_iw_samples
        x_float = self.to_float(x)
        kl_form = "mc" if self.posterior_flow is not None else "closed"
        rec, kl = self._elbo_terms(x_float, self._noise(len(x)), kl_form, label)
        nll = -self.iwae_bound(x, iw_samples, chunk, label)
        metrics = {"nelbo": rec + kl, "rec": rec, "kl": kl, "nll": nll}
        metrics["bpd"] = self.bits_per_dim(nll)
        if label is not None:
            samples = min(iw_samples, self.class_iw_samples)
            by_class = self.class_log_likelihoods(x, samples, chunk)
            marginal = -torch.logsumexp(by_class + self.log_class_prior(), 1)
            metrics["nll_marginal"] = marginal
            metrics["bpd_marginal"] = self.bits_per_dim(marginal)
            guess = (by_class + self.log_class_prior()).argmax(1)
            metrics["accuracy"] = (guess == label).float()
        return metrics

    def class_log_likelihoods(
        self, x: torch.Tensor, iw_samples: int, chunk: int | None = None
    ) -> torch.Tensor:
        """A conditional VAE's importance-weighted bound on log p(x|y) for
        every class y: (N, K) nats of uint8 images x."""
        columns = [
            self.iwae_bound(x, iw_samples, chunk, torch.full((len(x),), y, device=x.device))
            for y in range(self.num_classes)
        ]
        return torch.stack(columns, 1)

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, label: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """n decoder means at z ~ N(0, T^2 I) (probabilities for Bernoulli), as
        uint8; a conditional VAE's of the class `label`."""
        label = self.check_label(label, n)
        return self.decode_mean(self.prior.sample(n, temperature, device=self.device), label)

    # The latent-space pictures (scatter, manifold, interpolation, reconstructions)
    # need only these two, which the autoencoder shares.
    @torch.no_grad()
    def encode_mean(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, C, H, W) -> the codes the pictures use: mu of q(z|x),
        (N, k); with a posterior flow, mu of its Gaussian base q_0 (not the
        flowed posterior's mean, which has no closed form)."""
        return self.encode(self.to_float(x.to(self.device)))[0]

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (N, k) -> the decoder's means as uint8 images (N, C, H, W)
        (given label (N,) for a conditional VAE; class 0 where none is given)."""
        if self.num_classes and label is None:
            label = torch.zeros(len(z), dtype=torch.int64)
        label = None if label is None else label.to(self.device)
        mean = self.decoder.likelihood.mean(self.decode(z.to(self.device), label))
        return means_to_uint8(mean)
