"""Two stochastic layers: Burda et al.'s hierarchical VAE (2015, https://arxiv.org/abs/1509.00519, §5).

Generative model p(z2) p(z1|z2) p(x|z1) with p(z2) = N(0, I) and Gaussian p(z1|z2);
inference network q(z1|x) q(z2|z1), both diagonal Gaussians. With Burda et al.'s sizes
(``--hidden 200,200 --latent-dims 100,50 --hidden-top 100,100``, tanh):

    x -> 200 -> 200 -> z1 (100) -> 100 -> 100 -> z2 (50)      (inference)
    z2 -> 100 -> 100 -> z1 -> 200 -> 200 -> x                   (generation)

z is the concatenation ``[z1, z2]`` (groups ``z1`` and ``z2``). There is no closed-form KL
for the pair, so the rate is estimated by Monte Carlo per layer (log q - log p of the same
samples), and the importance-sampled estimator uses the full hierarchical proposal
q(z1|x) q(z2|z1). Active units are reported per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..distributions import LOG_2PI
from ..latents import LatentGroup, LatentSpace, NoiseSpec, Posterior, Prior
from ..likelihoods import likelihood_from_config
from ..workspace import per_group
from .base import LatentVariableModel
from .networks import build_networks, decoder_log_likelihood, mlp
from .registry import register_model


def _exp(t: Tensor) -> Tensor:
    """``exp`` group by group on ``[S, B, D]`` samples: the numbers of a sample do not depend
    on how many are computed at once (see :mod:`aevb.workspace`)."""
    return per_group(torch.exp, t)


def _log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, diag exp(logvar)) summed over the last dim: ``[..., D]`` -> ``[...]``."""
    return (-0.5 * (LOG_2PI + logvar + (z - mu).pow(2) * _exp(-logvar))).sum(-1)


def _log_normal_eps(eps: Tensor, logvar: Tensor) -> Tensor:
    """The same at z = mu + sigma * eps, from eps directly (exact, no cancellation)."""
    return (-0.5 * (LOG_2PI + logvar + eps.pow(2))).sum(-1)


class GaussianLayer(nn.Module):
    """A conditional diagonal Gaussian: an MLP from ``[..., d_in]`` to (mu, logvar) ``[..., d_out]``."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, activation: str):
        super().__init__()
        self.net = mlp([d_in, *hidden, 2 * d_out], activation)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(h).chunk(2, dim=-1)
        return mu, logvar


@dataclass
class HierarchicalPosterior(Posterior):
    """q(z1|x) q(z2|z1) for a batch: z1 = mu1 + s1 eps1, then z2 = mu2(z1) + s2(z1) eps2."""

    mu1: Tensor
    logvar1: Tensor
    layer2: GaussianLayer
    d2: int
    aux_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    num_groups: int = 2

    @property
    def noise(self) -> NoiseSpec:  # type: ignore[override]
        return NoiseSpec("normal", (self.mu1.shape[-1] + self.d2,))

    def _split(self, t: Tensor) -> tuple[Tensor, Tensor]:
        d1 = self.mu1.shape[-1]
        return t[..., :d1], t[..., d1:]

    def rsample_and_log_prob(self, eps: Tensor, groups: bool = False) -> tuple[Tensor, Tensor]:
        eps1, eps2 = self._split(eps)
        z1 = self.mu1 + torch.exp(0.5 * self.logvar1) * eps1
        mu2, logvar2 = self.layer2(z1)
        z2 = mu2 + _exp(0.5 * logvar2) * eps2
        log_q = torch.stack(
            [_log_normal_eps(eps1, self.logvar1), _log_normal_eps(eps2, logvar2)], -1
        )
        return torch.cat([z1, z2], -1), (log_q if groups else log_q.sum(-1))

    sample_and_log_prob = rsample_and_log_prob

    def rsample(self, eps: Tensor, temperature: float | None = None) -> Tensor:
        return self.rsample_and_log_prob(eps)[0]

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        z1, z2 = self._split(z)
        mu2, logvar2 = self.layer2(z1)
        log_q = torch.stack(
            [_log_normal(z1, self.mu1, self.logvar1), _log_normal(z2, mu2, logvar2)], -1
        )
        return log_q if groups else log_q.sum(-1)

    def summary(self) -> Tensor:
        """``[B, D1 + D2]``: E[z1|x] and E[z2 | z1 = E[z1|x]] (the mean path through both layers)."""
        return self.point()

    def point(self) -> Tensor:
        mu2, _ = self.layer2(self.mu1)
        return torch.cat([self.mu1, mu2], -1)


class HierarchicalPrior(Prior):
    """p(z2) p(z1|z2) with p(z2) = N(0, I): log-densities per group ``[z1, z2]``."""

    def __init__(self, layer: GaussianLayer, d1: int, d2: int):
        self.layer, self.d1, self.d2 = layer, d1, d2

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        z1, z2 = z[..., : self.d1], z[..., self.d1 :]
        mu1, logvar1 = self.layer(z2)
        log_p2 = (-0.5 * (LOG_2PI + z2.pow(2))).sum(-1)
        log_p = torch.stack([_log_normal(z1, mu1, logvar1), log_p2], -1)
        return log_p if groups else log_p.sum(-1)

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Ancestral: z2 ~ N(0, T^2 I), then z1 ~ N(mu(z2), T^2 sigma(z2)^2): ``[n, D1 + D2]``."""
        w = self.layer.net[0].weight
        z2 = temperature * torch.randn(
            n, self.d2, generator=generator, device=w.device, dtype=w.dtype
        )
        mu1, logvar1 = self.layer(z2)
        eps = torch.randn(n, self.d1, generator=generator, device=w.device, dtype=w.dtype)
        return torch.cat([mu1 + temperature * torch.exp(0.5 * logvar1) * eps, z2], -1)


@register_model
class HVAE(LatentVariableModel):
    """Burda et al.'s two-stochastic-layer VAE; the x <-> z1 networks follow ``--hidden``/``--arch``."""

    name = "hvae"

    def __init__(self, config: ModelConfig, sections: Mapping[str, Any]):
        super().__init__()
        self.config = config
        d1, d2 = sections["hvae"].latent_dims
        top = tuple(sections["hvae"].hidden_top)
        event_shape = tuple(config.input_shape)
        self.likelihood = likelihood_from_config(config, sections)
        self.encoder, self.decoder = build_networks(
            config.arch,
            event_shape,
            tuple(config.hidden),
            d1,
            config.activation,
            self.likelihood.param_shape,
        )
        self.encoder2 = GaussianLayer(d1, top, d2, config.activation)  # q(z2|z1)
        self.prior1 = GaussianLayer(d2, tuple(reversed(top)), d1, config.activation)  # p(z1|z2)
        self.d1, self.d2 = d1, d2
        self.latent = LatentSpace(
            kind="continuous",
            shape=(d1 + d2,),
            groups=(LatentGroup("z1", d1), LatentGroup("z2", d2)),
            noise=NoiseSpec("normal", (d1 + d2,)),
            summary_dim=d1 + d2,
            standard_normal=False,
        )

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        mu1, logvar1 = self.encoder(x).chunk(2, dim=-1)
        return HierarchicalPosterior(mu1, logvar1, self.encoder2, self.d2)

    def prior(self, y: Tensor | None = None) -> Prior:
        return HierarchicalPrior(self.prior1, self.d1, self.d2)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """p(x|z1): only the first group reaches the data."""
        return self.decoder(z[..., : self.d1])

    def log_likelihood_fn(self, x: Tensor, y: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        of_z1 = decoder_log_likelihood(self.decoder, self.likelihood, x)
        return lambda z: of_z1(z[..., : self.d1])
