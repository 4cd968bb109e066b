"""The variational autoencoder of Kingma & Welling (2013), https://arxiv.org/abs/1312.6114.

Generative model p(z) p_theta(x|z) with p(z) = N(0, I); inference network
q_phi(z|x) = N(mu_phi(x), diag exp(logvar_phi(x))). The model sees only its
:class:`~aevb.config.ModelConfig`. Its methods are the seams the objectives and
estimators use: ``encode``, ``decode``, ``log_likelihood``, ``log_prior``,
``log_posterior``, ``kl`` and ``log_importance_weights``; a variant (another prior,
hierarchical latents) overrides the ones it changes.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..distributions import (
    gaussian_kl_standard,
    log_normal_diag,
    log_standard_normal,
    reparameterise,
)
from ..errors import ConfigError
from ..latents import DiagonalGaussian, Posterior, Prior, StandardNormal, gaussian_space
from ..likelihoods import build_likelihood
from ..objectives import OBJECTIVES, VAEOutput
from .base import LatentVariableModel
from .networks import build_networks
from .registry import register_model


@register_model
class VAE(LatentVariableModel):
    """A VAE with a diagonal-Gaussian encoder, a standard-normal prior and a registry likelihood.

    Example:
        >>> from aevb import VAE, ModelConfig
        >>> model = VAE(ModelConfig(input_shape=(64,), latent_dim=2, likelihood="bernoulli"))
        >>> out = model(torch.rand(8, 64))
        >>> out.neg_elbo.shape
        torch.Size([8])
    """

    name = "vae"

    def __init__(self, config: ModelConfig):
        super().__init__()
        check_model_config(config)
        self.config = config
        self.event_shape = tuple(config.input_shape)
        self.event_dims = len(self.event_shape)
        self.likelihood = build_likelihood(
            config.likelihood, self.event_shape, config.sigma, config.sigma_min
        )
        self.encoder, self.decoder = build_networks(
            config.arch,
            self.event_shape,
            tuple(config.hidden),
            config.latent_dim,
            config.activation,
            self.likelihood.n_params,
        )
        self.objective = OBJECTIVES[config.objective]
        self.latent = gaussian_space(config.latent_dim)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x) = N(mu(x), diag exp(logvar(x)))."""
        return DiagonalGaussian(*self.encode(x))

    def prior(self, y: Tensor | None = None) -> Prior:
        """p(z) = N(0, I)."""
        p = next(self.parameters())
        return StandardNormal(self.config.latent_dim, p.device, p.dtype)

    # --- the pieces -----------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x): ``[B, *event]`` -> ``(mu, logvar)``, each ``[B, D]``."""
        h = self.encoder(x)
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Likelihood parameters: ``[..., D]`` -> ``[..., n_params, *event]``."""
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) in nats: ``x`` ``[B, *event]``, ``z`` ``[..., B, D]`` -> ``[..., B]``."""
        return self.likelihood.log_prob(x, self.decode(z))

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) = log N(z; 0, I): ``[..., D]`` -> ``[...]``."""
        return log_standard_normal(z)

    def log_posterior(self, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
        """log q(z|x): ``z`` ``[..., B, D]``, ``mu``/``logvar`` ``[B, D]`` -> ``[..., B]``."""
        return log_normal_diag(z, mu, logvar)

    def kl(self, mu: Tensor, logvar: Tensor, z: Tensor | None = None) -> Tensor:
        """KL(q(z|x) || p(z)) ``[B]``, closed form for the standard-normal prior (z unused)."""
        return gaussian_kl_standard(mu, logvar)

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """``log p(x|z_k) + log p(z_k) - log q(z_k|x)`` for k samples z_k ~ q(z|x): ``[k, B]``."""
        mu, logvar = self.encode(x)
        z = reparameterise(mu, logvar, k)
        return self.log_likelihood(x, z) + self.log_prior(z) - self.log_posterior(z, mu, logvar)

    # --- the objective --------------------------------------------------------------
    def forward(self, x: Tensor, eps: Tensor | None = None) -> VAEOutput:
        """Per-example objective terms for a batch ``x`` ``[B, *event]`` (see VAEOutput).

        ``eps`` (``[L, B, D]``, from :meth:`noise`) fixes the reparameterisation noise.
        """
        return self.objective(self, x, samples=self.config.samples, beta=self.config.beta, eps=eps)

    def noise(self, batch_size: int, device: torch.device | str) -> Tensor:
        """Standard-normal noise ``[L, batch_size, D]`` for one training step's forward pass."""
        return torch.randn(self.config.samples, batch_size, self.config.latent_dim, device=device)

    # --- using a trained model ------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        mean: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Generate ``[n, *event]``: z ~ N(0, temperature^2 I), then E[x|z] (or a draw of x)."""
        device = next(self.parameters()).device
        z = temperature * torch.randn(n, self.config.latent_dim, device=device, generator=generator)
        return self.generate(z, mean=mean, generator=generator)

    @torch.no_grad()
    def generate(
        self, z: Tensor, mean: bool = True, generator: torch.Generator | None = None
    ) -> Tensor:
        """Decode latents ``[..., D]`` to data ``[..., *event]`` (mean, or a sample of p(x|z))."""
        params = self.decode(z)
        if mean:
            return self.likelihood.mean(params)
        return self.likelihood.sample(params, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = mu(x)]: ``[B, *event]`` -> ``[B, *event]``."""
        mu, _ = self.encode(x)
        return self.generate(mu)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Posterior means mu(x): ``[B, *event]`` -> ``[B, D]``."""
        return self.encode(x)[0]

    # --- artifacts ------------------------------------------------------------------
    def save_pretrained(self, run_dir: str | Path) -> None:
        """Write ``model.safetensors`` and the model section of ``config.json`` into run_dir."""
        from ..checkpoint import CONFIG_FILE, read_config_dict, save_config, save_model
        from ..config import RunConfig

        # Keep the data/train sections (and dataset_info) of an existing run's config.
        d = read_config_dict(run_dir) if (Path(run_dir) / CONFIG_FILE).is_file() else {}
        config = RunConfig.from_dict({k: v for k, v in d.items() if k != "dataset_info"})
        save_config(run_dir, replace(config, model=self.config), d.get("dataset_info"))
        save_model(self, run_dir)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> VAE:
        """Restore a model saved in ``run_dir`` bit-exactly (weights from safetensors)."""
        from ..checkpoint import load_model

        model = load_model(run_dir, device=device)
        if not isinstance(model, cls):
            raise ConfigError(f"{run_dir} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def check_model_config(config: ModelConfig) -> None:
    """Reject configurations no model can be built from, with the fix in the message."""
    if not config.input_shape or any(s <= 0 for s in config.input_shape):
        raise ConfigError(f"input_shape must be positive sizes, got {config.input_shape}")
    if config.likelihood == "auto":
        raise ConfigError(
            "likelihood 'auto' must be resolved from the data before building a model"
        )
    if config.latent_dim < 1:
        raise ConfigError(f"--latent-dim must be >= 1, got {config.latent_dim}")
    if config.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {config.samples}")
    if not (config.beta >= 0 and math.isfinite(config.beta)):
        raise ConfigError(f"--beta must be a finite number >= 0, got {config.beta}")
    if any(h < 1 for h in config.hidden):
        raise ConfigError(f"--hidden sizes must be >= 1, got {config.hidden}")
    if config.objective not in OBJECTIVES:
        raise ConfigError(
            f"unknown --objective {config.objective!r}; choose one of {sorted(OBJECTIVES)}"
        )
