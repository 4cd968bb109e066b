"""Decoder likelihoods p(x|z), one registry.

A decoder network emits ``param_shape`` numbers per example; the likelihood turns them
into a log-density (``log_prob``), a mean (for pictures) and samples. Shapes: data ``x`` is
``[B, *event]``; decoder output ``params`` is ``[..., B, *param_shape]`` (the leading
``...`` is the L Monte-Carlo samples); ``log_prob`` returns ``[..., B]`` in nats. Most
likelihoods have ``n_params`` numbers per data element, ``param_shape = (n_params, *event)``;
the discretized logistic mixture has per-pixel parameters and its own ``param_shape``.

A likelihood also scores part of an example (``log_prob_where``, for models that predict
the missing part of an image from the observed rest): the per-site log-probabilities
(``log_prob_sites``; a site is a data element for the factorised likelihoods, a pixel with
its C channels for the mixture) weighted by a 0/1 mask. ``scores_probability(x)`` says
whether ``log_prob`` is the log of a probability of the data's discrete values (so that
bits per dimension are honest) or a density.

Learned standard deviations are ``sigma = sigma_min + softplus(raw)``: always positive and
bounded away from zero, so the Gaussian log-density cannot run off to +inf/NaN.

Add a likelihood by subclassing :class:`Likelihood` and decorating it with
``@register_likelihood``; ``ModelConfig.likelihood`` then accepts its name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .distributions import (
    DEFAULT_MIN_LOG_SCALE,
    log_bernoulli,
    log_discretized_logistic_mixture,
    log_discretized_logistic_mixture_pixels,
    log_normal_sigma,
    mean_discretized_logistic_mixture,
    sample_discretized_logistic_mixture,
    sum_log_sigmoid_,
)
from .errors import ConfigError, DataError
from .workspace import Workspace, groups, linear_into

LIKELIHOODS: dict[str, type[Likelihood]] = {}


def register_likelihood(cls: type[Likelihood]) -> type[Likelihood]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    LIKELIHOODS[cls.name] = cls
    return cls


def build_likelihood(
    name: str, event_shape: tuple[int, ...], sigma: float, sigma_min: float, **options: Any
) -> Likelihood:
    """Instantiate the likelihood registered as ``name`` for data of ``event_shape``."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}")
    return LIKELIHOODS[name](event_shape, sigma=sigma, sigma_min=sigma_min, **options)


def likelihood_from_config(config: Any, sections: Mapping[str, Any]) -> Likelihood:
    """The likelihood of a model's config section, with its own section's settings
    (``--mixtures`` for ``dmol``) when it has one."""
    section = sections.get(config.likelihood)
    options = dataclasses.asdict(section) if section is not None else {}
    return build_likelihood(
        config.likelihood, tuple(config.input_shape), config.sigma, config.sigma_min, **options
    )


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class Likelihood(nn.Module):
    """Base class: maps decoder outputs to a distribution over x."""

    name: ClassVar[str]
    n_params: ClassVar[int] = 1
    description: ClassVar[str] = ""
    # log_prob is a probability of the data's discrete values, so bits/dim are honest
    # (False: a density of continuous values, whose bits/dim depend on the data's scale).
    discrete: ClassVar[bool] = False

    def __init__(self, event_shape: tuple[int, ...], sigma: float = 0.1, sigma_min: float = 1e-3):
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.event_dims = len(self.event_shape)

    @property
    def param_shape(self) -> tuple[int, ...]:
        """Shape of the decoder output for one example: ``params`` is ``[..., B, *param_shape]``.

        By default ``(n_params, *event_shape)``: ``n_params`` numbers per data element.
        """
        return (self.n_params, *self.event_shape)

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z): ``x`` ``[B, *event]``, ``params`` ``[..., B, *param_shape]`` -> ``[..., B]``."""
        raise NotImplementedError

    @property
    def site_dims(self) -> int:
        """Trailing dimensions of :meth:`log_prob_sites` (the event's, for factorised ones)."""
        return self.event_dims

    def log_prob_sites(self, x: Tensor, params: Tensor) -> Tensor:
        """log p of each independent site, not summed: ``[..., B, *event]`` for a likelihood
        that factorises over data elements (``log_prob`` is its sum)."""
        raise NotImplementedError

    def site_mask(self, event_mask: Tensor) -> Tensor:
        """A 0/1 mask over the event ``[*event]`` as a mask over the sites."""
        return event_mask

    def log_prob_where(self, x: Tensor, params: Tensor, event_mask: Tensor) -> Tensor:
        """log p of the part of x where ``event_mask`` ``[*event]`` is 1: the sum over those
        sites of :meth:`log_prob_sites`. ``[B, *event]``, ``[..., B, *param_shape]`` -> ``[..., B]``.

        The mask must be constant over a site (over the channels of a pixel for ``dmol``).
        """
        sites = self.log_prob_sites(x, params)
        weight = self.site_mask(event_mask).to(sites.dtype)
        return (sites * weight).sum(dim=tuple(range(-self.site_dims, 0)))

    def scores_probability(self, x: Tensor) -> bool:
        """Whether ``log_prob`` on data ``x`` ``[B, *event]`` is the log of a probability of its
        discrete values (then bits/dim are honest), not a density of continuous values."""
        return self.discrete

    def param(self, params: Tensor, i: int) -> Tensor:
        """Parameter ``i``, ``[..., *event]``, of ``params`` ``[..., n_params, *event]``.

        With one parameter this is a squeeze, whose backward is a view; ``select``'s
        backward would fill a zero tensor the size of the data and copy into it every step.
        """
        dim = -self.event_dims - 1
        return params.squeeze(dim) if self.n_params == 1 else params.select(dim, i)

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z]: ``[..., *param_shape]`` -> ``[..., *event]``."""
        raise NotImplementedError

    def linear_log_prob(
        self, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> Callable[[Tensor], Tensor] | None:
        """log p(x|z) as a function of decoder features, where the decoder's last layer is linear.

        For a fixed batch ``x`` ``[B, *event]`` and params ``h @ weight.T + bias`` (``weight``
        ``[prod(param_shape), F]``), return ``h`` ``[..., B, F]`` -> ``[..., B]``, equal to
        ``log_prob(x, params)`` up to float rounding, with the per-example work done once
        here; or None where the likelihood has no such fused form (the default): callers
        then compute the params and call :meth:`log_prob`.
        """
        return None

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z): ``[..., *param_shape]`` -> ``[..., *event]``."""
        raise NotImplementedError

    def check_data(self, x: Tensor) -> None:
        """Raise :class:`DataError` if ``x`` cannot be scored by this likelihood."""
        self.finite_range(x)

    @staticmethod
    def finite_range(x: Tensor) -> tuple[float, float]:
        """``(min, max)`` of ``x`` in one pass; :class:`DataError` if any value is NaN or inf
        (the min and max propagate NaN, and an inf is one of them)."""
        if x.numel() == 0:
            return 0.0, 0.0
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError("data contains NaN or inf values; clean or impute them first")
        return lo, hi


@register_likelihood
class Bernoulli(Likelihood):
    name = "bernoulli"
    discrete = True  # for binary data; data in (0, 1) gets a cross-entropy, not a probability
    description = "Bernoulli from logits; for binary data (continuous data in [0, 1] is scored by cross-entropy)"

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return log_bernoulli(x, self.param(params, 0), self.event_dims)

    def log_prob_sites(self, x: Tensor, params: Tensor) -> Tensor:
        return log_bernoulli(x, self.param(params, 0), 0)

    def scores_probability(self, x: Tensor) -> bool:
        """A probability only of binary data: grey levels in (0, 1) get a cross-entropy."""
        return bool(((x == 0) | (x == 1)).all())

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(self.param(params, 0))

    def linear_log_prob(
        self, x: Tensor, weight: Tensor, bias: Tensor | None
    ) -> Callable[[Tensor], Tensor] | None:
        """For binary x: ``sum_d log sigmoid((2x_d - 1) l_d)``, logits ``l = h W^T + b``.

        For x in {0, 1}, ``x l - softplus(l) = log sigmoid((2x - 1) l) = -softplus((1 - 2x) l)``:
        the sign is computed once per example, and each chunk of samples costs one matmul
        (into a reused buffer: on a CPU fresh large tensors cost page faults) and, on a CPU
        in float32, one pass of :func:`aevb.native.bernoulli_rows` over the logits (C
        compiled on first use; 2.7x faster than the PyTorch path on this project's CPU).
        Where those kernels are not available, and in float64: one multiply and
        :func:`~aevb.distributions.sum_log_sigmoid_` (one sigmoid pass, logs of products of
        16 factors); on other devices, and under autograd, softplus and a sum. The
        cross-entropy makes several passes (its log-sigmoid alone costs more than this).
        Each term is a per-pixel log-probability, so nothing cancels: the numbers are the
        cross-entropy's to float rounding.

        (``sum_d x_d l_d = h . (W^T x) + b . x``, once per example, avoids even the
        multiply, but it cancels against ``sum_d softplus(l_d)``, both hundreds of nats on
        MNIST: measured, it lost up to 3e-4 nats per example in float32 and was no faster.)

        Checking that x is binary is a host sync, once per call (per evaluation batch);
        data that is not binary gets None (the generic cross-entropy).
        """
        xf = x.flatten(-self.event_dims)  # [B, D]
        if not bool(((xf == 0) | (xf == 1)).all()):
            return None
        sign = 1 - 2 * xf  # [B, D]: -1 where x = 1, +1 where x = 0
        agree = -sign  # log p(x_d | l_d) = log sigmoid(agree_d * l_d)
        workspace = Workspace()  # the logits' buffers, reused by every call
        flip = native.sign_bits(xf) if native.ENABLED and xf.device.type == "cpu" else None

        def log_prob(h: Tensor) -> Tensor:
            if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
                return -F.softplus(F.linear(h, weight, bias) * sign).sum(-1)
            # [..., B, D], or [g * B, D]: the rows of g samples, as the decoder's hot loop
            # hands them (aevb.models.networks.decoder_log_likelihood); the sign broadcast
            # over the samples (as [g, B, D], a view)
            logits = linear_into(workspace, "logits", h, weight, bias)
            by_sample = logits.view(-1, *xf.shape)
            if logits.device.type != "cpu":
                by_sample.mul_(sign)
                return -torch.ops.aten.softplus.out(logits, 1, 20, out=logits).sum(-1)
            if flip is not None and native.takes(logits):
                # one pass in C (aevb.native); rows with a pixel beyond 80 nats are left
                # to the PyTorch path below, the whole call with them
                out = logits.new_empty(logits.shape[:-1])  # small, and the caller keeps it
                if native.bernoulli_rows(logits.view(-1, xf.shape[-1]), flip, out.view(-1)) == 0:
                    return out
            # sigmoid's fast exp, not softplus's log1p(exp)
            work = workspace.empty("sigmoid", groups(logits)[0].shape, logits)  # a group's
            by_sample.mul_(agree)
            return sum_log_sigmoid_(logits, work=work)

        return log_prob

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(self.mean(params), generator=generator)

    def check_data(self, x: Tensor) -> None:
        lo, hi = self.finite_range(x)
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"the bernoulli likelihood needs data in [0, 1] but values span [{lo:g}, {hi:g}]; "
                "rescale the data or choose --likelihood gaussian"
            )


class _Gaussian(Likelihood):
    """Shared code of the Gaussian decoders: mean from the network, sigma from ``_sigma``."""

    discrete = False  # a density: its bits/dim depend on the data's scale

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

    def log_prob_sites(self, x: Tensor, params: Tensor) -> Tensor:
        return log_normal_sigma(x, self.param(params, 0), self._sigma(params), 0)

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


@register_likelihood
class DiscretizedLogisticMixture(Likelihood):
    """Discretized logistic mixture for 8-bit images (PixelCNN++, Salimans et al. 2017,
    https://arxiv.org/abs/1701.05517): the math is
    :func:`~aevb.distributions.log_discretized_logistic_mixture`.

    Data: ``[B, C, H, W]`` images of values v/255, v = 0..255. Each pixel has ``M =
    mixtures`` components shared by its C channels, and channel i's mean depends linearly
    on channels j < i. The decoder emits ``param_shape = (P, H, W)`` with
    ``P = M + 2*M*C + M*C*(C-1)/2`` (3M for C = 1, 10M for C = 3), laid out along P as

    ========================================  ==================================================
    index along P                             parameter (m = component, c = channel)
    ========================================  ==================================================
    ``m``                                     mixture logit of component m
    ``M + m*C + c``                           mean of (m, c), in [-1, 1] units (0 = mid-grey)
    ``M + M*C + m*C + c``                     log-scale of (m, c), floored at ``min_log_scale``
    ``M + 2*M*C + m*K + k``, K = C(C-1)/2     raw coefficient k of m (tanh applied), pairs
                                              (i, j), j < i, row by row: (g,r), (b,r), (b,g)
    ========================================  ==================================================

    ``n_params`` does not apply (the parameters are per pixel, not per element); decoders
    must size their output by ``param_shape``.
    """

    name = "dmol"
    discrete = True
    description = (
        "discretized logistic mixture (PixelCNN++) for 8-bit images [C, H, W]: "
        "a probability of the pixel values, --mixtures components per pixel"
    )
    num_bins: ClassVar[int] = 256

    def __init__(
        self,
        event_shape: tuple[int, ...],
        sigma: float = 0.1,
        sigma_min: float = 1e-3,
        mixtures: int = 10,
        min_log_scale: float = DEFAULT_MIN_LOG_SCALE,
    ):
        # sigma and sigma_min are the Gaussians' settings, accepted for build_likelihood.
        super().__init__(event_shape, sigma, sigma_min)
        if len(self.event_shape) != 3:
            raise ConfigError(
                f"the dmol likelihood needs images of shape [C, H, W], got data of shape "
                f"{list(self.event_shape)}; reshape the data to images or choose "
                "--likelihood gaussian"
            )
        if not (isinstance(mixtures, int) and mixtures >= 1):
            raise ConfigError(f"--mixtures must be a positive integer, got {mixtures!r}")
        self.mixtures = mixtures
        self.min_log_scale = float(min_log_scale)
        m, c = mixtures, self.event_shape[0]
        self.n_coeffs = c * (c - 1) // 2
        self.split_sizes = (m, m * c, m * c, m * self.n_coeffs)

    @property
    def n_params(self) -> int:  # type: ignore[override]
        raise ConfigError(
            "the dmol likelihood has per-pixel parameters of shape "
            f"{list(self.param_shape)}, not n_params per element, and this model's decoder "
            "only emits the latter; choose another --likelihood for this model"
        )

    @property
    def param_shape(self) -> tuple[int, ...]:
        """``(M + 2MC + M*C(C-1)/2, H, W)``; the layout is in the class docstring."""
        return (sum(self.split_sizes), *self.event_shape[1:])

    def split_params(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``[..., P, H, W]`` -> logits ``[..., M, H, W]``, means and log-scales
        ``[..., M, C, H, W]``, coefficients ``[..., M, C(C-1)/2, H, W]`` (None for C = 1)."""
        if tuple(params.shape[-3:]) != self.param_shape:
            raise ValueError(
                f"dmol parameters must end in {list(self.param_shape)}, got {list(params.shape)}"
            )
        m, c = self.mixtures, self.event_shape[0]
        logits, means, log_scales, coeffs = params.split(self.split_sizes, dim=-3)
        means, log_scales = means.unflatten(-3, (m, c)), log_scales.unflatten(-3, (m, c))
        coeffs = coeffs.unflatten(-3, (m, self.n_coeffs)) if self.n_coeffs else None
        return logits, means, log_scales, coeffs

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log P(x|z) in nats: ``[B, C, H, W]`` and ``[..., B, P, H, W]`` -> ``[..., B]``."""
        return log_discretized_logistic_mixture(
            x, *self.split_params(params), num_bins=self.num_bins, min_log_scale=self.min_log_scale
        )

    @property
    def site_dims(self) -> int:
        return 2  # a pixel's C values are one site: they share the mixture component

    def log_prob_sites(self, x: Tensor, params: Tensor) -> Tensor:
        """log P of each pixel's C values: ``[B, C, H, W]``, ``[..., B, P, H, W]`` -> ``[..., B, H, W]``."""
        return log_discretized_logistic_mixture_pixels(
            x, *self.split_params(params), num_bins=self.num_bins, min_log_scale=self.min_log_scale
        )

    def site_mask(self, event_mask: Tensor) -> Tensor:
        """``[C, H, W]`` -> ``[H, W]`` (a pixel counts when all its channels do)."""
        return event_mask.amin(dim=-3)

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z] in [0, 1] (see the mean function): ``[..., P, H, W]`` -> ``[..., C, H, W]``."""
        return mean_discretized_logistic_mixture(
            *self.split_params(params), min_log_scale=self.min_log_scale
        )

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x ~ P(x|z), values v/255: ``[..., P, H, W]`` -> ``[..., C, H, W]``."""
        return sample_discretized_logistic_mixture(
            *self.split_params(params),
            num_bins=self.num_bins,
            min_log_scale=self.min_log_scale,
            generator=generator,
        )

    def check_data(self, x: Tensor) -> None:
        super().check_data(x)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(
                f"the dmol likelihood needs 8-bit images scaled to [0, 1] (v/255) but values "
                f"span [{lo:g}, {hi:g}]; divide the raw uint8 pixels by 255 (no normalisation), "
                "or choose --likelihood gaussian"
            )
        last = self.num_bins - 1
        scaled = x.detach().double() * last
        off_grid = (scaled - scaled.round()).abs() / last  # distance to the grid, in data units
        worst = int(off_grid.argmax())
        if float(off_grid.flatten()[worst]) > 1e-6:
            value = float(x.flatten()[worst])
            raise DataError(
                f"the dmol likelihood needs 8-bit images stored as v/255 (v = 0..255) but found "
                f"the value {value:.6g} (= {value * last:.4g}/255) off that grid; pass the raw "
                "uint8 pixels divided by 255 (no dequantisation noise, normalisation or "
                "resizing), or choose --likelihood gaussian"
            )
