"""The variational autoencoder of Kingma & Welling (2013), https://arxiv.org/abs/1312.6114.

Inference network q(z|x) = N(mu(x), diag exp(logvar(x))), generative model p(x|z) p(z)
with a likelihood from the registry, and the prior ``--prior standard`` (N(0, I)) or
``--prior vamp`` (the VampPrior, Tomczak & Welling 2018, https://arxiv.org/abs/1705.07120:
p(z) = (1/K) sum_k q(z|u_k) over K learned pseudo-inputs u_k).

The model sees only its own sections: ``model`` (networks, likelihood, prior), ``vae``
(latent_dim) and ``vamp`` (pseudo_inputs) when that prior is chosen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..latents import (
    DiagonalGaussian,
    GaussianMixture,
    Posterior,
    Prior,
    StandardNormal,
    gaussian_space,
)
from ..likelihoods import likelihood_from_config
from .base import LatentVariableModel
from .networks import build_networks, decoder_log_likelihood
from .registry import register_model


class PseudoInputs(nn.Module):
    """The VampPrior's K learned pseudo-inputs ``[K, *event]``, initialised from data."""

    def __init__(self, k: int, event_shape: tuple[int, ...]):
        super().__init__()
        # Until data_init overwrites them: small noise around 0.5 (the middle of [0, 1]).
        self.u = nn.Parameter(0.5 + 0.01 * torch.randn(k, *event_shape))

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Copy training examples ``[n, *event]`` into the pseudo-inputs (repeated if n < K)."""
        idx = torch.arange(self.u.shape[0], device=x.device) % len(x)
        self.u.copy_(x[idx].to(self.u.dtype))


@register_model
class VAE(LatentVariableModel):
    """A VAE with a diagonal-Gaussian encoder, a registry likelihood and a N(0, I) or VampPrior prior.

    Example:
        >>> import aevb
        >>> config = aevb.RunConfig().replace(input_shape=(64,), likelihood="bernoulli")
        >>> model = aevb.build_model(config)
        >>> q = model.posterior(torch.rand(8, 64))
        >>> q.summary().shape
        torch.Size([8, 2])
    """

    name = "vae"
    priors = ("standard", "vamp")

    def __init__(self, config: ModelConfig, sections: Mapping[str, Any]):
        super().__init__()
        self.config = config
        dim = sections["vae"].latent_dim
        event_shape = tuple(config.input_shape)
        self.likelihood = likelihood_from_config(config, sections)
        self.encoder, self.decoder = build_networks(
            config.arch,
            event_shape,
            tuple(config.hidden),
            dim,
            config.activation,
            self.likelihood.param_shape,
        )
        vamp = config.prior == "vamp"
        self.latent = gaussian_space(dim, standard_normal=not vamp)
        if vamp:
            self.pseudo = PseudoInputs(sections["vamp"].pseudo_inputs, event_shape)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x) = N(mu(x), diag exp(logvar(x))): ``[B, *event]`` -> ``[B, D]`` parameters."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return DiagonalGaussian(mu, logvar)

    def prior(self, y: Tensor | None = None) -> Prior:
        if self.config.prior == "vamp":
            q = self.posterior(self.pseudo.u)
            return GaussianMixture(q.mu, q.logvar)
        w = next(self.parameters())
        return StandardNormal(self.latent.shape[0], w.device, w.dtype)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.decoder(z)

    def log_likelihood_fn(self, x: Tensor, y: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        return decoder_log_likelihood(self.decoder, self.likelihood, x)

    def data_init(self, x: Tensor) -> None:
        if self.config.prior == "vamp":
            self.pseudo.data_init(x)
