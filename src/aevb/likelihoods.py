"""Decoder likelihoods p(x|z), one registry.

A decoder network emits ``n_params`` numbers per data element; the likelihood turns them
into a log-density (``log_prob``), a mean (for pictures) and samples. Shapes: data ``x`` is
``[B, *event]``; decoder output ``params`` is ``[..., B, n_params, *event]`` (the leading
``...`` is the L Monte-Carlo samples); ``log_prob`` returns ``[..., B]`` in nats.

Learned standard deviations are ``sigma = sigma_min + softplus(raw)``: always positive and
bounded away from zero, so the Gaussian log-density cannot run off to +inf/NaN.

Add a likelihood by subclassing :class:`Likelihood` and decorating it with
``@register_likelihood``; ``ModelConfig.likelihood`` then accepts its name.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import log_bernoulli, log_normal_sigma
from .errors import ConfigError, DataError

LIKELIHOODS: dict[str, type[Likelihood]] = {}


def register_likelihood(cls: type[Likelihood]) -> type[Likelihood]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    LIKELIHOODS[cls.name] = cls
    return cls


def build_likelihood(
    name: str, event_shape: tuple[int, ...], sigma: float, sigma_min: float
) -> Likelihood:
    """Instantiate the likelihood registered as ``name`` for data of ``event_shape``."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](event_shape, sigma=sigma, sigma_min=sigma_min)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class Likelihood(nn.Module):
    """Base class: maps decoder outputs to a distribution over x."""

    name: ClassVar[str]
    n_params: ClassVar[int] = 1
    description: ClassVar[str] = ""

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.event_dims = len(self.event_shape)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of the decoder's output per example (``(n_params, *event)`` by default)."""
        return (self.n_params, *self.event_shape)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z): ``x`` ``[B, *event]``, ``params`` ``[..., B, *param_shape]`` -> ``[..., B]``."""
        raise NotImplementedError

    def param(self, params: Tensor, i: int) -> Tensor:
        """Parameter ``i``, ``[..., *event]``, of ``params`` ``[..., n_params, *event]``.

        With one parameter this is a squeeze, whose backward is a view; ``select``'s
        backward would fill a zero tensor the size of the data and copy into it every step.
        """
        dim = -self.event_dims - 1
        return params.squeeze(dim) if self.n_params == 1 else params.select(dim, i)

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z]: ``[..., n_params, *event]`` -> ``[..., *event]``."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z): ``[..., n_params, *event]`` -> ``[..., *event]``."""
        raise NotImplementedError

    def check_data(self, x: Tensor) -> None:
        """Raise :class:`DataError` if ``x`` cannot be scored by this likelihood."""
        if not torch.isfinite(x).all():
            raise DataError("data contains NaN or inf values; clean or impute them first")


@register_likelihood
class Bernoulli(Likelihood):
    name = "bernoulli"
    description = "Bernoulli from logits; for binary data (continuous data in [0, 1] is scored by cross-entropy)"

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return log_bernoulli(x, self.param(params, 0), self.event_dims)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(self.param(params, 0))

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean(params), generator=generator)

    def check_data(self, x: Tensor) -> None:
        super().check_data(x)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"the bernoulli likelihood needs data in [0, 1] but values span [{lo:g}, {hi:g}]; "
                "rescale the data or choose --likelihood gaussian"
            )


class _Gaussian(Likelihood):
    """Shared code of the Gaussian decoders: mean from the network, sigma from ``_sigma``."""

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__(event_shape, sigma, sigma_min)
        if not sigma > 0:
            raise ConfigError(f"--sigma must be positive, got {sigma}")
        if not sigma_min >= 0:  # a negative floor would let a learned sigma cross zero
            raise ConfigError(f"--sigma-min must be >= 0, got {sigma_min}")
        self.sigma_min = float(sigma_min)

    def _sigma(self, params: Tensor) -> Tensor | float:
        raise NotImplementedError

    def check_data(self, x: Tensor) -> None:
        super().check_data(x)
        big = float(x.abs().max()) if x.numel() else 0.0
        if big > 1e15:  # (x - mu)^2 / sigma^2 overflows float32 long before x itself does
            raise DataError(
                f"data values reach {big:.3g}: a Gaussian likelihood squares them, which "
                "overflows float32; standardise or rescale the data"
            )

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mu = self.param(params, 0)
        return log_normal_sigma(x, mu, self._sigma(params), self.event_dims)

    def mean(self, params: Tensor) -> Tensor:
        return self.param(params, 0)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mu = self.mean(params)
        noise = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
        return mu + self._sigma(params) * noise


@register_likelihood
class GaussianFixed(_Gaussian):
    name = "gaussian"
    description = "Gaussian with a fixed standard deviation --sigma"

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__(event_shape, sigma, sigma_min)
        self.sigma = float(sigma)

    def _sigma(self, params: Tensor) -> float:
        return self.sigma


class _GaussianLearnedParameter(_Gaussian):
    """sigma = sigma_min + softplus(raw), with ``raw`` a learned parameter of ``shape``."""

    def __init__(
        self, event_shape: tuple[int, ...], shape: tuple[int, ...], sigma: float, sigma_min: float
    ):
        super().__init__(event_shape, sigma, sigma_min)
        if sigma <= sigma_min:
            raise ConfigError(f"--sigma ({sigma}) must exceed --sigma-min ({sigma_min})")
        init = _inverse_softplus(sigma - sigma_min)
        self.raw_sigma = nn.Parameter(torch.full(shape, init))

    def _sigma(self, params: Tensor) -> Tensor:
        return self.sigma_min + F.softplus(self.raw_sigma)


@register_likelihood
class GaussianShared(_GaussianLearnedParameter):
    name = "gaussian-shared"
    description = (
        "Gaussian with one learned standard deviation for all elements (initialised at --sigma)"
    )

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__(event_shape, (), sigma, sigma_min)


@register_likelihood
class GaussianPixel(_GaussianLearnedParameter):
    name = "gaussian-pixel"
    description = (
        "Gaussian with a learned standard deviation per data element (initialised at --sigma)"
    )

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__(event_shape, tuple(event_shape), sigma, sigma_min)


@register_likelihood
class GaussianDecoded(_Gaussian):
    """The decoder emits mean and standard deviation per element, as in the paper's Frey Face model."""

    name = "gaussian-decoded"
    n_params = 2
    description = "Gaussian whose mean and standard deviation are both decoder outputs (the paper's Frey Face decoder)"

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__(event_shape, sigma, sigma_min)
        # Shift so that a zero network output starts at sigma = --sigma.
        self.offset = _inverse_softplus(max(sigma - sigma_min, 1e-6))

    def _sigma(self, params: Tensor) -> Tensor:
        raw = self.param(params, 1)
        return self.sigma_min + F.softplus(raw + self.offset)
