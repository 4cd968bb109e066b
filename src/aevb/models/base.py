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
Code that goes from a data batch ``(x, labels)`` to these calls first asks the model for
its context, ``y = model.context(x, labels)`` (the objectives and estimators do): the
labels for a label-conditioned model, the observed part of x for a completion model.

The objective is not part of the model: :mod:`aevb.objectives` turns these pieces into a
loss, and the trainer's step holds model and objective together.

Without autograd on a CPU with several threads, the estimators call a model from several
threads at once (:class:`aevb.workspace.Workers`): the posterior's and prior's sampling
and densities, ``log_likelihood`` and the function of ``log_likelihood_fn`` (one per
worker thread). They must not change what another call reads (a value cached on q, the
same whichever thread computes it, is fine); state a call overwrites belongs in what
``log_likelihood_fn`` returns.

Two optional capabilities have defaults that keep every model working:

* ``charts(x, y)`` — extra pictures of the model (e.g. codebook usage) as :class:`Chart`
  data, which :func:`aevb.figures.draw_run_figures` draws beside the standard ones;
* ``prior_network()`` — the network of a learned prior that a second stage fits to the
  posterior points after training (VQ-VAE's PixelCNN, ``aevb train-prior``), and
  ``set_prior_fitted()`` to switch ``prior()`` over to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..latents import KLTerms, LatentSpace, Posterior, Prior, kl_divergence
from ..likelihoods import Likelihood

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data.base import DatasetInfo


@dataclass(frozen=True)
class Chart:
    """A picture a model asks for beside the standard figures (:meth:`LatentVariableModel.charts`).

    Attributes:
        kind: ``bars`` (``values`` ``[K]``, one bar each) or ``heatmap`` (``values`` ``[R, C]``).
        values: the numbers to draw (CPU).
        title, xlabel, ylabel: what the picture says about them.
    """

    kind: str
    values: Tensor
    title: str
    xlabel: str = ""
    ylabel: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("bars", "heatmap"):
            raise ValueError(f"a chart is 'bars' or 'heatmap', not {self.kind!r}")


class LatentVariableModel(nn.Module):
    """Base class of aevb's models; subclasses register with ``@register_model``.

    Attributes:
        name: the ``--model`` name.
        section: the dataclass of this variant's own config section (or None).
        conditions_on: what the model conditions on: None, ``"labels"`` (class labels, with
            ``num_classes`` classes) or ``"observed"`` (an observed part of each example,
            ``scored_mask`` marking the rest, which the likelihood scores).
        num_classes: label classes of a label-conditioned model, else None.
        latent: the description of z.
        likelihood: the decoder likelihood p(x|z) (a module of :mod:`aevb.likelihoods`).
        log_px_name: what ``log_likelihood`` and the estimators score, in words.
    """

    name: ClassVar[str]
    section: ClassVar[type | None] = None
    conditions_on: str | None = None
    num_classes: int | None = None
    latent: LatentSpace
    likelihood: Likelihood
    log_px_name: str = "log p(x)"

    @property
    def conditional(self) -> bool:
        """Whether the model needs a context ``y`` (labels, an observed part)."""
        return self.conditions_on is not None

    @classmethod
    def fit_config(cls, config: RunConfig, info: DatasetInfo) -> RunConfig:
        """The run config with what the data decides for this variant filled in and checked
        against the data (e.g. the number of classes); called before the model is built,
        and again by later commands on the data they are given. Default: nothing to do."""
        return config

    def context(self, x: Tensor, y: Tensor | None = None) -> Tensor | None:
        """The context to condition on, from a data batch: ``x`` ``[B, *event]`` and its
        labels ``y`` ``[B]`` (or None). Default: the labels (ignored by unconditional models)."""
        return y

    def default_context(self, n: int) -> Tensor | None:
        """The context of :meth:`sample` when none is given (e.g. every class in turn)."""
        return None

    @property
    def scored_mask(self) -> Tensor | None:
        """``[*event]`` 0/1: the part of x the likelihood scores (None: all of it)."""
        return None

    def num_scored_dims(self) -> int:
        """How many data dimensions ``log_likelihood`` scores (for bits per dimension)."""
        mask = self.scored_mask
        return math.prod(self.likelihood.event_shape) if mask is None else int(mask.sum())

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
        :meth:`log_likelihood` up to float rounding; that is the default. The function
        may keep what it derived from the parameters (e.g. scaled weights): make a new one
        after the parameters change. It may keep buffers it overwrites (one function is
        called by one thread at a time: each of the estimator's worker threads makes its
        own).
        """
        return lambda z: self.log_likelihood(x, z, y)

    def kl(self, q: Posterior, p: Prior) -> KLTerms | None:
        """Closed-form KL(q || p) per group, or None (then the rate is estimated by Monte Carlo)."""
        return kl_divergence(q, p)

    def data_init(self, x: Tensor) -> None:
        """Initialise from a batch of training data ``[n, *event]`` before a fresh run (optional)."""

    # --- optional capabilities ----------------------------------------------------------
    def charts(self, x: Tensor, y: Tensor | None = None) -> dict[str, Chart]:
        """Extra pictures from test examples ``x``: ``{name: Chart}``, drawn to
        ``RUN/figures/<name>.png`` after training. None by default."""
        return {}

    def prior_network(self) -> nn.Module | None:
        """The learned prior that a second stage fits after training (``aevb train-prior``).

        A submodule with ``log_prob(z) -> [B]`` (nats) for posterior points ``z``
        ``[B, *z]`` (:meth:`~aevb.latents.Posterior.point`), trained to maximise it over the
        training split; None (the default) when the model has no such prior.
        """
        return None

    def set_prior_fitted(self, fitted: bool = True) -> None:
        """Say whether :meth:`prior_network` has been fitted; once it has, :meth:`prior` is it."""
        raise NotImplementedError(f"--model {self.name} has no prior network to fit")

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
        """``[n, *event]`` new data: z ~ p(z|y) at ``temperature``, then decoded.

        ``y`` is the context of each of the n samples (e.g. ``[n]`` labels); without it a
        conditional model uses :meth:`default_context`.
        """
        if y is None:
            y = self.default_context(n)
        z = self.prior(y).sample(n, temperature, generator)
        return self.generate(z, y, mean=mean, generator=generator)

    @torch.no_grad()
    def complete(
        self,
        x: Tensor,
        n: int,
        temperature: float = 1.0,
        mean: bool = False,
        generator: torch.Generator | None = None,
        mask: str | None = None,
    ) -> Tensor:
        """``n`` completions ``[n, B, *event]`` of each example from its observed part: a
        capability of models with ``conditions_on == "observed"``; others refuse."""
        raise ConfigError(
            "completion needs a model trained to complete images (--model cvae --condition "
            "mask); this one is not"
        )

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x | z = q's representative point]: ``[B, *event]`` -> ``[B, *event]``."""
        c = self.context(x, y)
        return self.generate(self.posterior(x, c).point(), c)

    @torch.no_grad()
    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The posterior summary of each example: ``[B, *event]`` -> ``[B, summary_dim]``."""
        return self.posterior(x, self.context(x, y)).summary()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
