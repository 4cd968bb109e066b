"""Training objectives as functions, one registry.

An objective takes a model and a batch ``x`` ``[B, *event]`` and returns a
:class:`VAEOutput` whose per-example ``loss`` ``[B]`` is what the trainer minimises (after
one mean over the batch). Every quantity is in nats per example; names carry the sign.

Add an objective (e.g. the IWAE bound) with ``@register_objective("name")``; a model
selects it by ``ModelConfig.objective``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from .distributions import reparameterise

if TYPE_CHECKING:
    from .models.vae import VAE


@dataclass(frozen=True)
class VAEOutput:
    """Per-example results of one forward pass (all ``[B]`` in nats unless noted).

    Attributes:
        loss: the objective minimised in training (``recon_nll + beta * kl`` for the ELBO).
        neg_elbo: the negative ELBO with beta = 1, ``recon_nll + kl`` (an upper bound on -log p(x)).
        recon_nll: -E_q[log p(x|z)], Monte-Carlo over L samples (the distortion).
        kl: KL(q(z|x) || p(z)) (the rate).
        z: ``[L, B, D]`` the latent samples used.
        mu, logvar: ``[B, D]`` parameters of q(z|x).
    """

    loss: Tensor
    neg_elbo: Tensor
    recon_nll: Tensor
    kl: Tensor
    z: Tensor
    mu: Tensor
    logvar: Tensor


Objective = Callable[..., VAEOutput]
OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Objective], Objective]:
    def deco(fn: Objective) -> Objective:
        OBJECTIVES[name] = fn
        return fn

    return deco


def elbo_terms(
    log_px_given_z: Tensor, kl: Tensor, beta: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Combine the Monte-Carlo reconstruction term and the closed-form KL (paper eq. 10).

    ``ELBO ~= (1/L) sum_l log p(x|z_l) - KL(q(z|x) || p(z))``, ``z_l = mu + sigma * eps_l``.

    Args:
        log_px_given_z: ``[L, B]`` log p(x|z_l) for L samples per example.
        kl: ``[B]`` KL(q(z|x) || p(z)).
        beta: weight of the KL term in the returned loss (1 gives the negative ELBO).

    Returns:
        ``(loss, neg_elbo, recon_nll)``, each ``[B]``: ``recon_nll + beta * kl``,
        ``recon_nll + kl`` and ``-mean_l log p(x|z_l)``.
    """
    recon_nll = -log_px_given_z.mean(dim=0)
    return recon_nll + beta * kl, recon_nll + kl, recon_nll


@register_objective("elbo")
def elbo(
    model: VAE, x: Tensor, samples: int = 1, beta: float = 1.0, eps: Tensor | None = None
) -> VAEOutput:
    """The (beta-weighted) ELBO with L = ``samples`` reparameterised samples.

    Args:
        model: supplies ``encode``, ``log_likelihood`` and ``kl``.
        x: ``[B, *event]`` data.
        eps: optional ``[samples, B, D]`` noise for the reparameterisation (drawn if None).

    Returns:
        A :class:`VAEOutput` with ``loss = recon_nll + beta * kl``.
    """
    mu, logvar = model.encode(x)
    z = reparameterise(mu, logvar, samples, eps=eps)  # [L, B, D]
    log_px_given_z = model.log_likelihood(x, z)  # [L, B]
    kl = model.kl(mu, logvar, z)  # [B]
    loss, neg_elbo, recon_nll = elbo_terms(log_px_given_z, kl, beta)
    return VAEOutput(loss, neg_elbo, recon_nll, kl, z, mu, logvar)
