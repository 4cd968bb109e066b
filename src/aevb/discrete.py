"""Discrete latents: categorical variables (Gumbel-softmax VAE) and grids of codes (VQ-VAE).

References: Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax" (2016),
https://arxiv.org/abs/1611.01144 (the relaxed posterior and its straight-through variant,
section 2); van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete
Representation Learning" (2017), https://arxiv.org/abs/1711.00937 (the deterministic code
posterior, whose KL against a uniform prior is the constant log K per code, section 3.1).

Two pairs of :class:`~aevb.latents.Posterior` / :class:`~aevb.latents.Prior`:

* categorical: z is N one-hot variables of C classes, ``[S, B, N, C]``.
  :class:`RelaxedCategoricalPosterior` trains through Gumbel-softmax samples (relaxed, or
  straight-through one-hots) and estimates with exact Gumbel-max one-hots, on which its
  ``log_prob`` is the true log-probability. All N variables form one group.
* codes: z is an H x W grid of indices into a K-entry codebook. :class:`CodePosterior` is a
  point mass at the quantised encoder output: training uses the straight-through vectors
  ``[S, B, D, H, W]``, estimation the indices ``[S, B, H, W]`` (long); decoders take both.
  Priors over code grids (:class:`CodePrior`) score and draw indices. Since q is a point
  mass, KL(q || p) = -log p(k(x)) exactly for any code prior: the constant H W log K for the
  uniform prior, the PixelCNN's negative log-likelihood of the codes for
  :class:`PixelCNNCodePrior` (whose gradient trains that prior and not the encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributions import (
    categorical_kl_uniform,
    gumbel_max,
    gumbel_softmax,
    log_categorical,
    straight_through,
)
from .latents import KLTerms, LatentGroup, LatentSpace, NoiseSpec, Posterior, Prior, register_kl
from .pixelcnn import GatedPixelCNN
from .quantizer import Quantized


def categorical_space(num_variables: int, num_classes: int, name: str = "z") -> LatentSpace:
    """N one-hot variables of C classes, ``(N, C)``: one group, uniform noise per class."""
    n, c = num_variables, num_classes
    return LatentSpace(
        kind="categorical",
        shape=(n, c),
        groups=(LatentGroup(name, n * c),),
        noise=NoiseSpec("uniform", (n, c)),
        summary_dim=n * c,
        classes=c,
    )


def code_space(height: int, width: int, num_codes: int, name: str = "codes") -> LatentSpace:
    """An H x W grid of indices into K codebook entries, ``(H, W)``: one group, no noise."""
    return LatentSpace(
        kind="codes",
        shape=(height, width),
        groups=(LatentGroup(name, height * width),),
        noise=NoiseSpec("none", (0,)),
        summary_dim=height * width,
        classes=num_codes,
    )


# --- categorical ------------------------------------------------------------------------------
@dataclass
class RelaxedCategoricalPosterior(Posterior):
    """q(z|x) = prod_n Cat(z_n; softmax(logits_n)) over ``[B, N, C]``, trained by Gumbel-softmax.

    Attributes:
        logits: ``[B, N, C]`` unnormalised log-probabilities.
        straight_through: :meth:`rsample` returns exact one-hots with the relaxed gradient.
        temperature: the relaxation temperature tau used when :meth:`rsample` gets none.
        aux_loss, metrics: as in :class:`~aevb.latents.Posterior`.
    """

    logits: Tensor
    straight_through: bool = False
    temperature: float = 1.0
    aux_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    # Training samples are relaxed (or carry a relaxed gradient) at the schedule's tau, which
    # the importance-weighted objective does not pass: it must refuse them.
    rsample_is_exact: ClassVar[bool] = False

    @property
    def noise(self) -> NoiseSpec:  # type: ignore[override]
        return NoiseSpec("uniform", tuple(self.logits.shape[-2:]))

    def rsample(self, eps: Tensor, temperature: float | None = None) -> Tensor:
        """``[S, B, N, C]`` Gumbel-softmax samples at ``temperature`` from ``eps`` U(0, 1)."""
        tau = self.temperature if temperature is None else temperature
        return gumbel_softmax(self.logits, eps, tau, hard=self.straight_through)

    def sample(self, eps: Tensor) -> Tensor:
        """``[S, B, N, C]`` exact one-hot samples (Gumbel-max), no gradient."""
        return gumbel_max(self.logits, eps)

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        """log q(z|x) for one-hot ``z`` ``[S, B, N, C]``: ``[S, B]`` (``[S, B, 1]``, one group).

        Relaxed samples have a different (Concrete) density; this is not it.
        """
        log_q = log_categorical(z, self.logits)
        return log_q.unsqueeze(-1) if groups else log_q

    def summary(self) -> Tensor:
        """``[B, N * C]`` the class probabilities."""
        return torch.softmax(self.logits, dim=-1).flatten(1)

    def point(self) -> Tensor:
        """``[B, N, C]`` the one-hot of each variable's most probable class."""
        return F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).to(self.logits.dtype)


class UniformCategoricalPrior(Prior):
    """p(z) = prod_n Uniform(C) over N one-hot variables.

    A uniform prior has no typical region to concentrate on: ``temperature`` in
    :meth:`sample` has no effect.
    """

    description = "the uniform prior over classes"

    def __init__(
        self,
        num_variables: int,
        num_classes: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.num_variables, self.num_classes = num_variables, num_classes
        self.device, self.dtype = torch.device(device), dtype

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        """``-N log C`` for every one-hot ``z`` ``[..., N, C]``: ``[...]`` (``[..., 1]``)."""
        if tuple(z.shape[-2:]) != (self.num_variables, self.num_classes):
            raise ValueError(
                f"the prior is over {self.num_variables} variables of {self.num_classes} "
                f"classes, [..., {self.num_variables}, {self.num_classes}]; got {list(z.shape)}"
            )
        value = -self.num_variables * math.log(self.num_classes)
        log_p = z.new_full(z.shape[:-2], value)
        return log_p.unsqueeze(-1) if groups else log_p

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n, N, C]`` uniform one-hots (``temperature`` is ignored)."""
        shape = (n, self.num_variables)
        idx = torch.randint(self.num_classes, shape, device=self.device, generator=generator)
        return F.one_hot(idx, self.num_classes).to(self.dtype)


@register_kl(RelaxedCategoricalPosterior, UniformCategoricalPrior)
def _kl_categorical_uniform(q: RelaxedCategoricalPosterior, p: UniformCategoricalPrior) -> KLTerms:
    # The KL of the categorical q, not of its relaxation: exact, and 0 at the uniform q.
    if tuple(q.logits.shape[-2:]) != (p.num_variables, p.num_classes):
        raise ValueError(
            f"posterior logits {list(q.logits.shape)} do not match the prior's "
            f"{p.num_variables} variables of {p.num_classes} classes"
        )
    per_variable = categorical_kl_uniform(q.logits)  # [B, N]
    return KLTerms(per_variable.sum(-1, keepdim=True), per_variable)


# --- codes ------------------------------------------------------------------------------------
@dataclass
class CodePosterior(Posterior):
    """q(k|x) = a point mass at the codes of the quantised encoder output (VQ-VAE).

    Attributes:
        z_e: ``[B, D, H, W]`` encoder output.
        z_q: ``[B, D, H, W]`` its nearest codebook entries (only the value is used).
        indices: ``[B, H, W]`` (long) their indices.
        aux_loss: ``[B]`` codebook + commitment loss of the quantiser.
        metrics: the quantiser's diagnostics (usage, perplexity, restarts, ...).
    """

    z_e: Tensor
    z_q: Tensor
    indices: Tensor
    aux_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def from_quantized(cls, z_e: Tensor, out: Quantized) -> CodePosterior:
        """From the encoder output and :class:`~aevb.quantizer.VectorQuantizer`'s result."""
        return cls(z_e, out.quantized.detach(), out.indices, out.aux_loss, out.metrics)

    @property
    def noise(self) -> NoiseSpec:  # type: ignore[override]
        return NoiseSpec("none", (0,))

    def rsample(self, eps: Tensor, temperature: float | None = None) -> Tensor:
        """``[S, B, D, H, W]``: z_q in value, the gradient to z_e (straight-through); S = eps.shape[0]."""
        st = straight_through(self.z_q.detach(), self.z_e)
        return st.unsqueeze(0).expand(eps.shape[0], *st.shape)

    def sample(self, eps: Tensor) -> Tensor:
        """``[S, B, H, W]`` (long) the indices, S = eps.shape[0]."""
        return self.indices.unsqueeze(0).expand(eps.shape[0], *self.indices.shape)

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        """log q: ``[S, B, ...]`` -> ``[S, B]`` (``[S, B, 1]``).

        Index grids ``[S, B, H, W]`` (long) get 0 where they equal this posterior's codes and
        -inf elsewhere; vectors ``[S, B, D, H, W]`` are taken to be its own samples (0).
        """
        if z.dtype == torch.long:
            same = (z == self.indices).flatten(2).all(-1)
            zero = torch.zeros((), dtype=self.z_e.dtype, device=z.device)
            log_q = torch.where(same, zero, zero - math.inf)
        else:
            log_q = z.new_zeros(z.shape[:2])
        return log_q.unsqueeze(-1) if groups else log_q

    def summary(self) -> Tensor:
        """``[B, H * W]`` the indices as floats."""
        return self.indices.flatten(1).to(self.z_e.dtype)

    def point(self) -> Tensor:
        """``[B, H, W]`` (long) the indices."""
        return self.indices


class CodePrior(Prior):
    """p(k) over H x W grids of indices into K entries; subclasses give the per-code terms.

    Attributes:
        height, width: the grid shape.
        num_codes: K.
    """

    height: int
    width: int
    num_codes: int

    def log_prob_per_code(self, indices: Tensor) -> Tensor:
        """``[..., H, W]`` (long) -> ``[..., H, W]``: each code's log-probability (given those
        before it in raster order, for an autoregressive prior), in nats."""
        raise NotImplementedError

    def check(self, z: Tensor) -> Tensor:
        """``z`` itself if it is an index grid ``[..., H, W]`` (long), else a ValueError."""
        if z.dtype != torch.long or tuple(z.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"a code prior scores index grids [..., {self.height}, {self.width}] (long); got "
                f"{z.dtype} {list(z.shape)}. Pass the posterior's sample(eps) (indices), not "
                "its rsample (vectors)"
            )
        return z

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        """log p(k) for index grids ``[..., H, W]`` (long): ``[...]`` (``[..., 1]``)."""
        log_p = self.log_prob_per_code(self.check(z)).sum((-2, -1))
        return log_p.unsqueeze(-1) if groups else log_p


class UniformCodePrior(CodePrior):
    """p(k) = Uniform(K) at each of the H x W positions: log p = -H W log K for every grid.

    A uniform prior has no typical region to concentrate on: ``temperature`` in
    :meth:`sample` has no effect.
    """

    description = "the uniform prior over codes (fit a learned one: `aevb train-prior RUN`)"

    def __init__(
        self,
        height: int,
        width: int,
        num_codes: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.height, self.width, self.num_codes = height, width, num_codes
        self.device, self.dtype = torch.device(device), dtype

    def log_prob_per_code(self, indices: Tensor) -> Tensor:
        return torch.full(
            indices.shape, -math.log(self.num_codes), dtype=self.dtype, device=indices.device
        )

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n, H, W]`` (long) uniform indices (``temperature`` is ignored)."""
        shape = (n, self.height, self.width)
        return torch.randint(self.num_codes, shape, device=self.device, generator=generator)


class PixelCNNCodePrior(CodePrior):
    """p(k) given by a :class:`~aevb.pixelcnn.GatedPixelCNN` (autoregressive in raster order).

    Holds the network (an ``nn.Module`` owned by the model); gradients of :meth:`log_prob`
    train it.
    """

    description = "the learned PixelCNN prior over codes"

    def __init__(self, pixelcnn: GatedPixelCNN) -> None:
        self.pixelcnn = pixelcnn
        self.height, self.width = pixelcnn.height, pixelcnn.width
        self.num_codes = pixelcnn.num_codes

    def log_prob_per_code(self, indices: Tensor) -> Tensor:
        lead = indices.shape[:-2]
        flat = indices.reshape(-1, self.height, self.width)  # [S*B, H, W]
        return self.pixelcnn.log_prob_per_code(flat).view(*lead, self.height, self.width)

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n, H, W]`` (long) grids from softmax(logits / temperature), code by code."""
        return self.pixelcnn.sample(n, temperature, generator)


@register_kl(CodePosterior, CodePrior)
def _kl_codes(q: CodePosterior, p: CodePrior) -> KLTerms:
    # q is a point mass at k(x): KL(q || p) = -log p(k(x)), exactly (van den Oord et al. 3.1).
    per_code = -p.log_prob_per_code(p.check(q.indices)).flatten(1)  # [B, H*W]
    return KLTerms(per_code.sum(-1, keepdim=True), per_code)
