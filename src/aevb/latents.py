"""Latent variables as objects: the posterior q(z|x), the prior p(z), and what z is.

Every aevb model hands the rest of the library three things (see
:class:`aevb.models.base.LatentVariableModel`), and the trainer, the estimators, the
figures and the CLI use nothing else:

* a :class:`LatentSpace` describing z: its kind (``continuous``, ``categorical`` or
  ``codes``), its event shape, its groups (the units of KL, free bits and active units)
  and whether its prior is a standard normal (the only case where the manifold grid and
  spherical interpolation mean something);
* a :class:`Posterior` per batch, q(z|x): reparameterised samples for training, exact
  samples with their log-density for estimation, and a summary (the posterior mean for a
  Gaussian) for embeddings and active units;
* a :class:`Prior`, p(z): log-density and sampling with a temperature.

The vocabulary is torch.distributions' (``rsample``, ``sample``, ``log_prob``, ``mean``):
the one difference is that the noise is passed in (``eps``), drawn by the caller from a
:class:`NoiseSpec`, so that the trainer, every data-parallel rank and the chunked
evaluator draw exactly the same numbers whatever the batching.

Shapes: B examples, S samples per example, ``*z`` the latent event shape. Samples are
``[S, B, *z]``, log-densities ``[S, B]`` in nats (``[S, B, G]`` per group with
``groups=True``). Closed-form KLs are found by type, as in torch.distributions'
``kl_divergence``: :func:`register_kl` adds one, :func:`kl_divergence` returns ``None``
when there is none, and the caller then estimates the rate by Monte Carlo.

The Gaussian pair (:class:`DiagonalGaussian`, :class:`StandardNormal`) is the only code in
aevb that computes with ``mu`` and ``logvar``; other latents live beside their models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .distributions import LOG_2PI, gaussian_kl_diag_per_dim, gaussian_kl_per_dim
from .workspace import per_group

# --- what z is --------------------------------------------------------------------------
KINDS = ("continuous", "categorical", "codes")


@dataclass(frozen=True)
class NoiseSpec:
    """The base noise a posterior turns into samples: ``kind`` over ``shape`` per sample.

    ``normal`` is N(0, 1), ``uniform`` is U(0, 1); ``none`` (shape ``(0,)``) marks a
    deterministic posterior (a point mass, e.g. VQ-VAE's codes), whose samples are all one.
    """

    kind: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("normal", "uniform", "none"):
            raise ValueError(f"unknown noise kind {self.kind!r}")

    @property
    def deterministic(self) -> bool:
        return self.kind == "none"

    def draw(
        self,
        samples: int,
        batch: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``[samples, batch, *shape]`` from ``generator`` (default: the global RNG)."""
        shape = (samples, batch, *self.shape)
        if self.kind == "normal":
            return torch.randn(shape, device=device, dtype=dtype, generator=generator)
        if self.kind == "uniform":
            return torch.rand(shape, device=device, dtype=dtype, generator=generator)
        return torch.empty((samples, batch, 0), device=device, dtype=dtype)

    def fill_(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """Fill ``out`` in place with this noise from ``generator`` (used per (seed, k))."""
        if self.kind == "normal":
            return out.normal_(generator=generator)
        if self.kind == "uniform":
            return out.uniform_(generator=generator)
        return out


@dataclass(frozen=True)
class LatentGroup:
    """A named part of z: ``size`` consecutive entries of the flattened latent."""

    name: str
    size: int


@dataclass(frozen=True)
class LatentSpace:
    """What a model's z is, for everything that walks, plots, reports or picks it.

    Attributes:
        kind: ``continuous`` (real vectors), ``categorical`` (one-hot variables, possibly
            relaxed) or ``codes`` (indices into a learned codebook).
        shape: event shape of one z as the decoder takes it (``(D,)``, ``(N, C)``, ``(H, W)``).
        groups: the parts of the flattened z, in order (one group unless hierarchical).
        noise: the base noise of one posterior sample.
        standard_normal: the prior is N(0, I) over all of z (enables the manifold grid for
            2-D z and spherical interpolation).
        classes: categories per variable (categorical) or codebook entries (codes).
        summary_dim: width of :meth:`Posterior.summary` (the embedding).
    """

    kind: str
    shape: tuple[int, ...]
    groups: tuple[LatentGroup, ...]
    noise: NoiseSpec
    summary_dim: int
    standard_normal: bool = False
    classes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"latent kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def group_slices(self) -> dict[str, slice]:
        """Where each group lies in the flattened z: ``{name: slice}``."""
        out, start = {}, 0
        for g in self.groups:
            out[g.name] = slice(start, start + g.size)
            start += g.size
        return out

    def describe(self) -> dict:
        """A JSON-able description (for ``aevb info`` and the explorer)."""
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "groups": [{"name": g.name, "size": g.size} for g in self.groups],
            "standard_normal": self.standard_normal,
            "classes": self.classes,
            "summary_dim": self.summary_dim,
        }


def gaussian_space(dim: int, standard_normal: bool = True, name: str = "z") -> LatentSpace:
    """A D-dimensional continuous latent with one group and normal noise."""
    return LatentSpace(
        kind="continuous",
        shape=(dim,),
        groups=(LatentGroup(name, dim),),
        noise=NoiseSpec("normal", (dim,)),
        summary_dim=dim,
        standard_normal=standard_normal,
    )


# --- the two objects ----------------------------------------------------------------------
class Posterior:
    """q(z|x) for a batch of B examples.

    Attributes:
        noise: the base noise one sample needs.
        aux_loss: ``[B]`` extra training loss that comes with the encoding (e.g. VQ-VAE's
            codebook and commitment terms), or None.
        metrics: scalar diagnostics of the encoding to log (e.g. codebook perplexity): the
            trainer logs each one's mean over an epoch's steps as ``train_<name>``, except
            running counts named ``*_total``, logged as their last value.
    """

    noise: NoiseSpec
    aux_loss: Tensor | None = None
    metrics: dict[str, Tensor]
    num_groups: int = 1  # columns of log_prob(z, groups=True)
    rsample_is_exact: bool = True  # False for relaxed samples (no density of q on them)

    def rsample(self, eps: Tensor, temperature: float | None = None) -> Tensor:
        """Differentiable samples for training, ``[S, B, *z]``, from noise ``eps`` ``[S, B, *noise]``.

        ``temperature`` is the relaxation temperature of a relaxed discrete latent (ignored
        by continuous ones).
        """
        raise NotImplementedError

    def sample(self, eps: Tensor) -> Tensor:
        """Exact samples of q, ``[S, B, *z]``, on which :meth:`log_prob` is a true density."""
        return self.rsample(eps)

    def sample_and_log_prob(self, eps: Tensor, groups: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`sample` and its log q(z|x) ``[S, B]`` (``[S, B, G]`` with ``groups``);
        override when one pass gives both."""
        z = self.sample(eps)
        return z, self.log_prob(z, groups)

    def rsample_and_log_prob(self, eps: Tensor, groups: bool = False) -> tuple[Tensor, Tensor]:
        """:meth:`rsample` and its log q(z|x), differentiable (IWAE training, Monte-Carlo KL)."""
        z = self.rsample(eps)
        return z, self.log_prob(z, groups)

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        """log q(z|x) in nats: ``[S, B, *z]`` -> ``[S, B]`` (``[S, B, G]`` with ``groups``)."""
        raise NotImplementedError

    def summary(self) -> Tensor:
        """``[B, summary_dim]``: the embedding of each example (the mean for a Gaussian)."""
        raise NotImplementedError

    def point(self) -> Tensor:
        """``[B, *z]``: one representative latent per example, to decode (reconstructions)."""
        raise NotImplementedError


class Prior:
    """p(z) (possibly conditional on a context fixed at construction).

    ``description`` names it in figure titles ("samples from the prior").

    Attributes:
        standard_normal: p(z) is N(0, I).
        batched: one distribution per example of a batch (a conditional prior p(z|y) built
            for B contexts): ``log_prob`` broadcasts over the batch dimension and
            ``sample(B)`` draws one z per example; otherwise one p(z) serves every example.
    """

    standard_normal: ClassVar[bool] = False
    batched: ClassVar[bool] = False
    description: ClassVar[str] = "the prior"

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        """log p(z) in nats: ``[..., *z]`` -> ``[...]`` (``[..., G]`` with ``groups``)."""
        raise NotImplementedError

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n, *z]`` samples; ``temperature`` < 1 concentrates them on the typical region."""
        raise NotImplementedError


@dataclass(frozen=True)
class KLTerms:
    """A closed-form KL(q(z|x) || p(z)) in nats.

    Attributes:
        groups: ``[B, G]``, one column per latent group.
        per_dim: ``[B, D]`` per latent dimension, where the KL factorises that way, else None.
    """

    groups: Tensor
    per_dim: Tensor | None = None

    @property
    def total(self) -> Tensor:
        """``[B]``."""
        return self.groups.sum(-1)


KLFn = Callable[[Posterior, Prior], KLTerms]
_KL_REGISTRY: dict[tuple[type, type], KLFn] = {}


def register_kl(q_type: type, p_type: type) -> Callable[[KLFn], KLFn]:
    """Decorator: ``fn(q, p) -> KLTerms`` is the closed form for this pair of types."""

    def deco(fn: KLFn) -> KLFn:
        _KL_REGISTRY[(q_type, p_type)] = fn
        return fn

    return deco


def kl_divergence(q: Posterior, p: Prior) -> KLTerms | None:
    """The closed-form KL(q || p) if one is registered for the pair's types (or parents)."""
    for qt in type(q).__mro__:
        for pt in type(p).__mro__:
            fn = _KL_REGISTRY.get((qt, pt))
            if fn is not None:
                return fn(q, p)
    return None


def _kept(obj: object, name: str, make: Callable[[], Tensor]) -> Tensor:
    """``make()``, computed on the first call and kept in ``obj.__dict__[name]``.

    By hand rather than ``functools.cached_property``: on Python 3.11 that takes a lock
    which torch.compile cannot trace (a graph break per access in the compiled training
    step; ``tests/test_objectives.py`` checks that the step traces as one graph).
    """
    value = obj.__dict__.get(name)
    if value is None:
        value = obj.__dict__[name] = make()
    return value


# --- the Gaussian pair ------------------------------------------------------------------
@dataclass
class DiagonalGaussian(Posterior):
    """q(z|x) = N(mu, diag exp(logvar)) over ``[B, D]``; z = mu + sigma * eps (Kingma & Welling, eq. 4)."""

    mu: Tensor
    logvar: Tensor
    aux_loss: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def noise(self) -> NoiseSpec:  # type: ignore[override]
        return NoiseSpec("normal", (self.mu.shape[-1],))

    # sigma and log q(mu|x): once per posterior (the estimator draws many chunks from one)
    @property
    def std(self) -> Tensor:
        """``[B, D]`` sigma."""
        return _kept(self, "_std", lambda: torch.exp(0.5 * self.logvar))

    @property
    def log_prob_at_mean(self) -> Tensor:
        """``[B]`` log q(mu|x) = -(D log 2 pi + sum_j log sigma_j^2) / 2: the part of log q
        that does not depend on the sample."""
        d = self.logvar.shape[-1]
        return _kept(self, "_log_prob_at_mean", lambda: -0.5 * (d * LOG_2PI + self.logvar.sum(-1)))

    def rsample(self, eps: Tensor, temperature: float | None = None) -> Tensor:
        # a multiply and an add (exact IEEE operations, the same numbers wherever an element
        # sits), not addcmul: whether its kernel fuses them into an FMA depends on the CPU
        return self.mu + self.std * eps

    def sample_and_log_prob(self, eps: Tensor, groups: bool = False) -> tuple[Tensor, Tensor]:
        # (z - mu) / sigma is eps itself: log q needs no division, and no cancellation;
        # log q(z|x) = log q(mu|x) - |eps|^2 / 2, two passes over the samples
        z = self.rsample(eps)
        log_q = self.log_prob_at_mean - 0.5 * eps.square().sum(-1)
        return z, (log_q.unsqueeze(-1) if groups else log_q)

    rsample_and_log_prob = sample_and_log_prob  # the same expression, differentiable

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        log_q = -0.5 * (LOG_2PI + self.logvar + (z - self.mu).pow(2) * torch.exp(-self.logvar))
        log_q = log_q.sum(-1)
        return log_q.unsqueeze(-1) if groups else log_q

    def summary(self) -> Tensor:
        return self.mu

    def point(self) -> Tensor:
        return self.mu


class StandardNormal(Prior):
    """p(z) = N(0, I) over ``(D,)``."""

    standard_normal = True

    def __init__(self, dim: int, device: torch.device | str = "cpu", dtype=torch.float32):
        self.dim, self.device, self.dtype = dim, torch.device(device), dtype

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        log_p = -0.5 * z.square().sum(-1) - 0.5 * z.shape[-1] * LOG_2PI
        return log_p.unsqueeze(-1) if groups else log_p

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, temperature^2 I): ``[n, D]``."""
        eps = torch.randn(n, self.dim, device=self.device, dtype=self.dtype, generator=generator)
        return temperature * eps


@register_kl(DiagonalGaussian, StandardNormal)
def _kl_gaussian_standard(q: DiagonalGaussian, p: StandardNormal) -> KLTerms:
    # Appendix B of Kingma & Welling: -KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2).
    per_dim = gaussian_kl_per_dim(q.mu, q.logvar)
    return KLTerms(per_dim.sum(-1, keepdim=True), per_dim)


class ConditionalGaussian(Prior):
    """A prior per example, p(z|y) = N(mu(y), diag exp(logvar(y))), parameters ``[B, D]``.

    The conditional prior of a conditional VAE (Sohn, Lee & Yan 2015, "Learning Structured
    Output Representation using Deep Conditional Generative Models", NeurIPS): one
    Gaussian per context row. ``log_prob(z)`` takes ``[..., B, D]``; ``sample(n)`` needs
    ``n == B`` (one draw per context) and returns ``[B, D]``.
    """

    batched = True

    def __init__(self, mu: Tensor, logvar: Tensor):
        self.mu, self.logvar = mu, logvar

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        log_p = -0.5 * (LOG_2PI + self.logvar + (z - self.mu).pow(2) * torch.exp(-self.logvar))
        log_p = log_p.sum(-1)
        return log_p.unsqueeze(-1) if groups else log_p

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mu + temperature * sigma * eps, one per context row: ``[B, D]`` (n must be B)."""
        if n != self.mu.shape[0]:
            raise ValueError(f"a conditional prior of {self.mu.shape[0]} contexts draws {n}")
        eps = torch.randn(
            self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype
        )
        return self.mu + temperature * torch.exp(0.5 * self.logvar) * eps


@register_kl(DiagonalGaussian, ConditionalGaussian)
def _kl_gaussian_conditional(q: DiagonalGaussian, p: ConditionalGaussian) -> KLTerms:
    # Between two diagonal Gaussians, dimension by dimension (e.g. Kingma & Welling, App. B).
    per_dim = gaussian_kl_diag_per_dim(q.mu, q.logvar, p.mu, p.logvar)
    return KLTerms(per_dim.sum(-1, keepdim=True), per_dim)


class GaussianMixture(Prior):
    """p(z) = (1/K) sum_k N(z; mu_k, diag exp(logvar_k)): the VampPrior's form (Tomczak &
    Welling 2018, https://arxiv.org/abs/1705.07120, eq. 9), components ``[K, D]``.

    The log-density is one batched logsumexp over components, with the quadratic form
    expanded into two matmuls (``[N, D] x [D, K]``) in float64, so no ``[N, K, D]`` tensor
    is made and the expansion loses no precision.
    """

    def __init__(self, mu: Tensor, logvar: Tensor):
        self.mu, self.logvar = mu, logvar

    def log_prob(self, z: Tensor, groups: bool = False) -> Tensor:
        # [S, B, D] samples group by group: a sample's numbers do not depend on S
        log_p = per_group(self._log_prob, z)
        return log_p.unsqueeze(-1) if groups else log_p

    def _log_prob(self, z: Tensor) -> Tensor:
        lead, d = z.shape[:-1], z.shape[-1]
        zz = z.reshape(-1, d).double()
        inv_var = torch.exp(-self.logvar.double())  # [K, D]
        mu = self.mu.double()
        # sum_d (z_d - mu_kd)^2 / var_kd = z^2 . inv_var - 2 z . (mu inv_var) + sum mu^2 inv_var
        quad = zz.pow(2) @ inv_var.T - 2 * zz @ (mu * inv_var).T + (mu.pow(2) * inv_var).sum(-1)
        log_comp = -0.5 * (d * LOG_2PI + self.logvar.double().sum(-1) + quad)  # [N, K]
        log_p = torch.logsumexp(log_comp, dim=-1) - math.log(self.mu.shape[0])
        return log_p.to(z.dtype).reshape(lead)

    def sample(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """A uniformly chosen component, then z = mu_k + temperature * sigma_k * eps: ``[n, D]``."""
        k = torch.randint(self.mu.shape[0], (n,), generator=generator, device=self.mu.device)
        eps = torch.randn(
            n, self.mu.shape[1], generator=generator, device=self.mu.device, dtype=self.mu.dtype
        )
        return self.mu[k] + temperature * torch.exp(0.5 * self.logvar[k]) * eps
