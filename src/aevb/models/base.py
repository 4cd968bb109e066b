"""The one interface of every aevb model: a latent-variable model p(x|z) p(z) with q(z|x).

A model is an ``nn.Module`` that implements five methods and one attribute, and the rest
of aevb (trainer, objectives, estimators, figures, CLI, explorer) uses only these:

* ``latent`` — a :class:`~aevb.latents.LatentSpace`: kind, shape, groups, noise;
* ``posterior(x, y)`` — q(z|x) as a :class:`~aevb.latents.Posterior`;
* ``prior(y)`` — p(z) as a :class:`~aevb.latents.Prior`;
* ``log_likelihood(x, z, y)`` — log p(x|z) ``[S, B]``, and ``generate(z, y)`` — decoding;
* ``kl(q, p)`` — the closed-form KL per latent group when one exists, else ``None``
  (callers then estimate the rate by Monte Carlo).

``y`` is the context of a conditional model (a label, an observed part of the image);
unconditional models accept and ignore it, so callers never branch on the model's kind.

The objective is not part of the model: :mod:`aevb.objectives` turns these pieces into a
loss, and the trainer's step holds model and objective together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..latents import KLTerms, LatentSpace, Posterior, Prior, kl_divergence
from ..likelihoods import Likelihood


class LatentVariableModel(nn.Module):
    """Base class of aevb's models; subclasses register with ``@register_model``.

    Attributes:
        name: the ``--model`` name.
        section: the dataclass of this variant's own config section (or None).
        conditional: whether the model needs a context ``y`` (labels, an observed part).
        latent: the description of z.
        likelihood: the decoder likelihood p(x|z) (a module of :mod:`aevb.likelihoods`).
    """

    name: ClassVar[str]
    section: ClassVar[type | None] = None
    conditional: ClassVar[bool] = False
    latent: LatentSpace
    likelihood: Likelihood

    # --- the interface ------------------------------------------------------------------
    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x) for a batch ``x`` ``[B, *event]``."""
        raise NotImplementedError

    def prior(self, y: Tensor | None = None) -> Prior:
        """p(z) (p(z|y) for a conditional prior)."""
        raise NotImplementedError

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Likelihood parameters: ``[..., *z]`` -> ``[..., *likelihood.param_shape]``."""
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, z: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x|z) in nats: ``x`` ``[B, *event]``, ``z`` ``[S, B, *z]`` -> ``[S, B]``."""
        return self.likelihood.log_prob(x, self.decode(z, y))

    def log_likelihood_fn(self, x: Tensor, y: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        """log p(x|z) for a fixed batch ``x``, as a function ``z`` ``[S, B, *z]`` -> ``[S, B]``.

        For many calls with the same x (the estimator's chunks of samples): a model may do
        per-example work once here and fuse its decoder with the likelihood (see
        :func:`~aevb.models.networks.decoder_log_likelihood`). Equal to
        :meth:`log_likelihood` up to float rounding; that is the default.
        """
        return lambda z: self.log_likelihood(x, z, y)

    def kl(self, q: Posterior, p: Prior) -> KLTerms | None:
        """Closed-form KL(q || p) per group, or None (then the rate is estimated by Monte Carlo)."""
        return kl_divergence(q, p)

    def data_init(self, x: Tensor) -> None:
        """Initialise from a batch of training data ``[n, *event]`` before a fresh run (optional)."""

    # --- built on the interface ---------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        z: Tensor,
        y: Tensor | None = None,
        mean: bool = True,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Decode latents ``[..., *z]`` to data ``[..., *event]``: E[x|z], or a draw of x."""
        params = self.decode(z, y)
        if mean:
            return self.likelihood.mean(params)
        return self.likelihood.sample(params, generator=generator)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        mean: bool = True,
        generator: torch.Generator | None = None,
        y: Tensor | None = None,
    ) -> Tensor:
        """``[n, *event]`` new data: z ~ p(z) at ``temperature``, then decoded."""
        z = self.prior(y).sample(n, temperature, generator)
        return self.generate(z, y, mean=mean, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x | z = q's representative point]: ``[B, *event]`` -> ``[B, *event]``."""
        return self.generate(self.posterior(x, y).point(), y)

    @torch.no_grad()
    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The posterior summary of each example: ``[B, *event]`` -> ``[B, summary_dim]``."""
        return self.posterior(x, y).summary()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
