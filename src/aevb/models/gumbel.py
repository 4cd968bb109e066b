"""A VAE with categorical latents: Jang, Gu & Poole, "Categorical Reparameterization with
Gumbel-Softmax" (2016), https://arxiv.org/abs/1611.01144.

z is N one-hot variables of C classes (``--variables 20 --categories 10``, their setting),
with a uniform prior p(z) = prod_n Uniform(C). The encoder emits N x C logits; the
decoder reads z flattened to N * C numbers. Their MNIST networks are
``--hidden 512,256`` (784-512-256-(20x10) and the mirror image back).

Training draws relaxed samples ``y = softmax((log pi + g) / tau)``, g ~ Gumbel(0, 1)
(eq. 2), or, with ``--straight-through``, the exact one-hot in the forward pass and the
relaxed gradient in the backward pass (section 2.2). tau is the schedule ``tau`` of the
``gumbel`` config section (annealed from ``--tau-start`` to ``--tau-min``), which the
trainer evaluates at every step and logs. The KL is that of the categorical q to the
uniform prior, in closed form. Evaluation uses exact (hard) one-hot samples: the ELBO
with the exact KL, and importance-sampled log p(x) with the categorical q as proposal, so
the numbers are those of the discrete model, comparable with a Gaussian VAE's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import ModelConfig
from ..discrete import RelaxedCategoricalPosterior, UniformCategoricalPrior, categorical_space
from ..latents import Posterior, Prior
from ..likelihoods import likelihood_from_config
from .base import Chart, LatentVariableModel
from .networks import build_networks
from .registry import register_model


@register_model
class GumbelVAE(LatentVariableModel):
    """Categorical latents trained by Gumbel-softmax; ``--arch mlp`` or ``conv`` networks.

    Example:
        >>> import aevb
        >>> config = aevb.RunConfig().replace(
        ...     model="gumbel", input_shape=(64,), likelihood="bernoulli", variables=4
        ... )
        >>> model = aevb.build_model(config)
        >>> model.prior().sample(2).shape
        torch.Size([2, 4, 10])
    """

    name = "gumbel"

    def __init__(self, config: ModelConfig, sections: Mapping[str, Any]):
        super().__init__()
        self.config = config
        section = sections["gumbel"]
        n, c = section.variables, section.categories
        self.straight_through = section.straight_through
        self.likelihood = likelihood_from_config(config, sections)
        self.encoder, self.decoder = build_networks(
            config.arch,
            tuple(config.input_shape),
            tuple(config.hidden),
            n * c,
            config.activation,
            self.likelihood.param_shape,
            encoder_out=n * c,
        )
        self.latent = categorical_space(n, c)

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x) = prod_n Cat(softmax(logits_n(x))): logits ``[B, N, C]``."""
        logits = self.encoder(x).unflatten(-1, self.latent.shape)
        return RelaxedCategoricalPosterior(logits, straight_through=self.straight_through)

    def prior(self, y: Tensor | None = None) -> Prior:
        w = next(self.parameters())
        n, c = self.latent.shape
        return UniformCategoricalPrior(n, c, w.device, w.dtype)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """One-hot (or relaxed) ``[..., N, C]`` -> likelihood parameters."""
        return self.decoder(z.flatten(-2))

    @torch.no_grad()
    def charts(self, x: Tensor, y: Tensor | None = None) -> dict[str, Chart]:
        """``class_usage``: how often each class is the most probable one, per variable."""
        point = self.posterior(x, y).point()  # [B, N, C] one-hot
        usage = point.float().mean(0)  # [N, C], rows sum to 1
        n, c = self.latent.shape
        title = (
            f"class usage per latent variable: fraction of {len(x)} test examples whose most "
            f"probable class is c (uniform: {1 / c:.2f})"
        )
        return {
            "class_usage": Chart(
                "heatmap", usage.cpu(), title, xlabel="class c", ylabel="variable n"
            )
        }
