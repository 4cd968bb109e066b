"""Training objectives: what is maximised, written against the model interface alone.

**Where the ELBO is computed**: :class:`ELBO` (Kingma & Welling 2013, eq. 10, with the
closed-form KL of Appendix B when the model has one, a Monte-Carlo rate otherwise).
:class:`IWAE` trains the k-sample importance-weighted bound (Burda et al. 2015,
https://arxiv.org/abs/1509.00519, eq. 8). Both, and the evaluator in
:mod:`aevb.estimators`, compute importance weights through the one function
:func:`importance_terms`.

An objective is called as ``objective(model, x, y, eps, hyper, train=...)`` with a data
batch (``y`` its labels or None; the objective asks the model for its context,
``model.context(x, y)``, so a conditional model trains on log p(x | c)) and returns an
:class:`ObjectiveOutput` of per-example ``[B]`` terms in nats (names carry the sign).
``hyper`` holds the schedule values of the step (``beta``, ``tau``, ...), see
:mod:`aevb.schedules`. With ``train=False`` the objective scores what it bounds: beta = 1,
no free bits, exact (not relaxed) samples.

Add one with ``@register_objective``: a class built from the run config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .distributions import log_mean_exp
from .errors import ConfigError
from .latents import KLTerms, Posterior, Prior

if TYPE_CHECKING:
    from .config import RunConfig
    from .models.base import LatentVariableModel


@dataclass(frozen=True)
class ImportanceTerms:
    """The pieces of log w = log p(x|z) + log p(z) - log q(z|x) for samples z ``[S, B, *z]``.

    ``log_pz`` and ``log_qz`` are ``[S, B, G]``, one column per latent group.
    """

    z: Tensor
    log_px_z: Tensor
    log_pz: Tensor
    log_qz: Tensor

    @property
    def log_w(self) -> Tensor:
        """``[S, B]`` log importance weights."""
        return self.log_px_z + (self.log_pz - self.log_qz).sum(-1)


def importance_terms(
    model: LatentVariableModel,
    x: Tensor,
    q: Posterior,
    p: Prior,
    eps: Tensor,
    y: Tensor | None = None,
    *,
    reparameterised: bool = False,
    log_likelihood: Callable[[Tensor], Tensor] | None = None,
) -> ImportanceTerms:
    """The one function of importance weights: z_k ~ q(z|x) from noise ``eps`` ``[S, B, *noise]``,
    then log p(x|z_k), log p(z_k) and log q(z_k|x).

    ``reparameterised`` keeps the samples differentiable (IWAE training); otherwise they
    are q's exact samples (estimation). ``log_likelihood`` is log p(x|.) prepared for this
    x by ``model.log_likelihood_fn(x, y)`` (fused and with its per-example work done once;
    the estimator prepares it once per batch and worker for all its chunks); by default
    ``model.log_likelihood``.
    """
    sample = q.rsample_and_log_prob if reparameterised else q.sample_and_log_prob
    z, log_qz = sample(eps, groups=True)
    log_px_z = model.log_likelihood(x, z, y) if log_likelihood is None else log_likelihood(z)
    return ImportanceTerms(z, log_px_z, p.log_prob(z, groups=True), log_qz)


@dataclass(frozen=True)
class ObjectiveOutput:
    """Per-example results of one objective evaluation (all ``[B]`` in nats unless noted).

    Attributes:
        loss: what training minimises (after one mean over the batch).
        neg_elbo: -ELBO with beta = 1: ``recon_nll + kl``.
        recon_nll: -E_q[log p(x|z)], the distortion.
        kl: KL(q(z|x) || p(z)), the rate (closed form, or Monte Carlo over the samples).
        kl_groups: ``[B, G]`` the rate per latent group.
        kl_per_dim: ``[B, D]`` the rate per latent dimension where the KL factorises, else None.
        terms: further per-example values to log (e.g. ``neg_iw_bound``).
        metrics: scalar diagnostics of the encoding (e.g. codebook perplexity).
    """

    loss: Tensor
    neg_elbo: Tensor
    recon_nll: Tensor
    kl: Tensor
    kl_groups: Tensor
    kl_per_dim: Tensor | None = None
    terms: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def per_example(self) -> dict[str, Tensor]:
        """The ``[B]`` and ``[B, D]`` values to accumulate, by name."""
        out = {
            "loss": self.loss,
            "neg_elbo": self.neg_elbo,
            "recon_nll": self.recon_nll,
            "kl": self.kl,
            **self.terms,
        }
        if self.kl_per_dim is not None:
            out["kl_per_dim"] = self.kl_per_dim
        elif self.kl_groups.shape[-1] > 1:
            out["kl_per_group"] = self.kl_groups
        return out


def rate(model: LatentVariableModel, q: Posterior, p: Prior, t: ImportanceTerms) -> KLTerms:
    """The closed-form KL if the model has one, else the Monte-Carlo mean of log q - log p."""
    kl = model.kl(q, p)
    if kl is None:
        kl = KLTerms((t.log_qz - t.log_pz).mean(0))
    return kl


def free_bits(kl: KLTerms, threshold: float, per: str) -> Tensor:
    """The KL penalty with free bits: ``sum_j max(threshold, mean_batch KL_j)`` (Kingma et al. 2016).

    Written per example so that its batch mean is exactly that sum: units whose batch-mean
    KL is above the threshold keep their per-example KL (so their gradient is unchanged),
    the others contribute the constant threshold (no gradient). The batch mean is taken
    over the global batch when training in several processes.

    Args:
        kl: the closed-form or Monte-Carlo KL.
        threshold: nats per unit.
        per: ``dim`` (per latent dimension) or ``group``.

    Returns:
        ``[B]``.
    """
    from .distributed import global_mean

    if per == "dim":
        if kl.per_dim is None:
            raise ConfigError(
                "--free-bits-per dim needs a KL that factorises over dimensions; this model's "
                "rate does not: use --free-bits-per group"
            )
        units = kl.per_dim
    else:
        units = kl.groups
    batch_mean = global_mean(units.detach())  # [J]
    return torch.where(batch_mean > threshold, units, threshold).sum(-1)


# --- the registry -----------------------------------------------------------------------------
class Objective:
    """Base class: ``num_samples`` samples of z per example, scored by ``__call__``."""

    name: str
    monitor: str = "neg_elbo"  # the validation value early stopping watches

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def __call__(
        self,
        model: LatentVariableModel,
        x: Tensor,
        y: Tensor | None,
        eps: Tensor,
        hyper: dict[str, float],
        train: bool = True,
    ) -> ObjectiveOutput:
        raise NotImplementedError


OBJECTIVES: dict[str, Callable[[RunConfig], Objective]] = {}


def register_objective(name: str) -> Callable[[Any], Any]:
    """Decorator: ``cls.from_config(run_config)`` builds the objective ``--objective name``."""

    def deco(cls: Any) -> Any:
        cls.name = name
        OBJECTIVES[name] = cls.from_config
        return cls

    return deco


def build_objective(config: RunConfig) -> Objective:
    name = config.objective.objective
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown --objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](config)


@register_objective("elbo")
class ELBO(Objective):
    """The beta-weighted ELBO with L reparameterised samples, optionally with free bits.

    ``loss = recon_nll + beta * KL (+ the posterior's auxiliary loss)``; with beta = 1 and
    no free bits it is the negative ELBO.
    """

    def __init__(self, samples: int = 1, free_bits: float = 0.0, free_bits_per: str = "dim"):
        self.samples, self.threshold, self.per = samples, free_bits, free_bits_per

    @classmethod
    def from_config(cls, config: RunConfig) -> ELBO:
        oc = config.objective
        return cls(config.elbo.samples, oc.free_bits, oc.free_bits_per)

    @property
    def num_samples(self) -> int:
        return self.samples

    def __call__(self, model, x, y, eps, hyper, train=True):
        y = model.context(x, y)
        q, p = model.posterior(x, y), model.prior(y)
        kl = model.kl(q, p)
        if kl is None:  # Monte Carlo over the same samples: log q(z|x) - log p(z), per group
            sample = q.rsample_and_log_prob if train else q.sample_and_log_prob
            z, log_q = sample(eps, groups=True)  # [L, B, *z], [L, B, G]
            kl = KLTerms((log_q - p.log_prob(z, groups=True)).mean(0))
        else:
            z = q.rsample(eps, hyper.get("tau")) if train else q.sample(eps)  # [L, B, *z]
        log_px = model.log_likelihood(x, z, y)  # [L, B]
        # the mean over one sample is that sample (exactly): a view, not a reduction
        recon_nll = -(log_px.squeeze(0) if log_px.shape[0] == 1 else log_px.mean(0))
        total = kl.total
        neg_elbo = recon_nll + total
        beta = hyper.get("beta", 1.0) if train else 1.0
        if train and self.threshold > 0:
            penalty = free_bits(kl, self.threshold, self.per)
            loss = recon_nll + (penalty if beta == 1.0 else beta * penalty)
        else:  # beta = 1: the loss is the negative ELBO itself (no operations to repeat)
            loss = neg_elbo if beta == 1.0 else recon_nll + beta * total
        if q.aux_loss is not None:
            loss = loss + q.aux_loss
        return ObjectiveOutput(
            loss, neg_elbo, recon_nll, total, kl.groups, kl.per_dim, metrics=q.metrics
        )


@register_objective("iwae")
class IWAE(Objective):
    """The k-sample importance-weighted bound ``log (1/k) sum_k w_k`` (Burda et al. 2015, eq. 8).

    It bounds log p(x) more tightly than the ELBO and equals it at k = 1. It has no KL
    weight: beta must be 1 (constant), and free bits do not apply.
    """

    monitor = "neg_iw_bound"

    def __init__(self, k: int = 50):
        self.k = k

    @classmethod
    def from_config(cls, config: RunConfig) -> IWAE:
        oc = config.objective
        if oc.beta != 1 or oc.beta_schedule != "constant":
            raise ConfigError(
                "--objective iwae trains the importance-weighted bound, which has no KL weight: "
                "drop --beta/--beta-schedule (beta must be 1)"
            )
        if oc.free_bits > 0:
            raise ConfigError("--free-bits applies to --objective elbo, not iwae")
        return cls(config.iwae.k)

    @property
    def num_samples(self) -> int:
        return self.k

    def __call__(self, model, x, y, eps, hyper, train=True):
        y = model.context(x, y)
        q, p = model.posterior(x, y), model.prior(y)
        if q.noise.deterministic:
            raise ConfigError(
                "--objective iwae averages importance weights over samples of q(z|x); this "
                "model's q is a point mass, for which the bound is the ELBO: use --objective elbo"
            )
        if not getattr(q, "rsample_is_exact", True):
            raise ConfigError(
                "--objective iwae needs exact reparameterised samples of q(z|x); this model's "
                "are relaxed: use --objective elbo"
            )
        t = importance_terms(model, x, q, p, eps, y, reparameterised=train)
        neg_bound = -log_mean_exp(t.log_w, dim=0)
        recon_nll = -t.log_px_z.mean(0)
        kl = rate(model, q, p, t)
        loss = neg_bound if q.aux_loss is None else neg_bound + q.aux_loss
        return ObjectiveOutput(
            loss,
            recon_nll + kl.total,
            recon_nll,
            kl.total,
            kl.groups,
            kl.per_dim,
            terms={"neg_iw_bound": neg_bound},
            metrics=q.metrics,
        )
