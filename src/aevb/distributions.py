"""Densities and sampling as small pure functions of tensors.

Conventions (see ../shared/CONVENTIONS.md): every log-density is in nats and summed over
the event dimensions, so a batch of B examples gives shape ``[B]`` (or ``[L, B]`` with L
samples in front). Variances are always parameterised by ``logvar = log sigma^2``.
Nothing here reduces over the batch; callers reduce once.

References: Kingma & Welling, "Auto-Encoding Variational Bayes" (2013),
https://arxiv.org/abs/1312.6114 — eq. (10) for the reparameterised ELBO and Appendix B
for the closed-form Gaussian KL.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native
from .workspace import groups

LOG_2PI = math.log(2.0 * math.pi)


def sum_event(t: Tensor, event_dims: int) -> Tensor:
    """Sum the trailing ``event_dims`` dimensions of ``t`` (the per-example reduction)."""
    if event_dims == 0:
        return t
    return t.sum(dim=tuple(range(-event_dims, 0)))


def reparameterise(
    mu: Tensor,
    logvar: Tensor,
    samples: int = 1,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
) -> Tensor:
    """Draw ``z = mu + sigma * eps`` with ``eps ~ N(0, I)`` (Kingma & Welling, eq. 4).

    The sample is a differentiable function of ``mu`` and ``logvar``, so gradients of a
    Monte-Carlo objective reach the encoder.

    Args:
        mu: ``[B, D]`` means.
        logvar: ``[B, D]`` log-variances.
        samples: number L of independent samples per example.
        generator: optional torch.Generator for the noise.
        eps: optional ``[L, B, D]`` standard-normal noise to use instead of drawing it
            (the trainer passes the global batch's noise so that data-parallel ranks use
            exactly the noise one process would).

    Returns:
        ``[L, B, D]`` samples.
    """
    std = torch.exp(0.5 * logvar)
    if eps is None:
        shape = (samples, *mu.shape)
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + std * eps


def gaussian_kl_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """Closed-form KL(N(mu, diag sigma^2) || N(0, I)) in nats (Appendix B of the paper).

    ``KL = -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)``.

    Args:
        mu: ``[..., D]`` means.
        logvar: ``[..., D]`` log-variances.

    Returns:
        ``[...]`` KL divergence, summed over the last dimension.
    """
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-dimension KL(N(mu_j, sigma_j^2) || N(0, 1)); ``[..., D]`` in, ``[..., D]`` out."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Closed-form KL(N(mu_q, diag var_q) || N(mu_p, diag var_p)) in nats.

    ``KL = 1/2 * sum_j (logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1)``.

    Args:
        mu_q, logvar_q: ``[..., D]`` parameters of q.
        mu_p, logvar_p: ``[..., D]`` parameters of p (broadcastable to q's shape).

    Returns:
        ``[...]`` KL divergence, summed over the last dimension.
    """
    var_ratio = torch.exp(logvar_q - logvar_p)
    mean_term = (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * torch.sum(logvar_p - logvar_q + var_ratio + mean_term - 1.0, dim=-1)


def gaussian_kl_diag_per_dim(
    mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor
) -> Tensor:
    """Per-dimension KL(N(mu_q, var_q) || N(mu_p, var_p)): the terms :func:`gaussian_kl` sums.

    Args:
        mu_q, logvar_q: ``[..., D]`` parameters of q.
        mu_p, logvar_p: ``[..., D]`` parameters of p (broadcastable to q's shape).

    Returns:
        ``[..., D]`` in nats.
    """
    var_ratio = torch.exp(logvar_q - logvar_p)
    mean_term = (mu_q - mu_p).pow(2) * torch.exp(-logvar_p)
    return 0.5 * (logvar_p - logvar_q + var_ratio + mean_term - 1.0)


def log_normal_diag(x: Tensor, mu: Tensor, logvar: Tensor, event_dims: int = 1) -> Tensor:
    """log N(x; mu, diag exp(logvar)) in nats, summed over the trailing ``event_dims``.

    Args:
        x: ``[..., *event]`` points.
        mu, logvar: broadcastable to ``x``.
        event_dims: how many trailing dimensions form one event.

    Returns:
        ``[...]`` log-densities.
    """
    log_p = -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar))
    return sum_event(log_p, event_dims)


def log_standard_normal(z: Tensor, event_dims: int = 1) -> Tensor:
    """log N(z; 0, I) in nats, summed over the trailing ``event_dims``; ``[..., *event]`` in."""
    return sum_event(-0.5 * (LOG_2PI + z.pow(2)), event_dims)


def log_bernoulli(x: Tensor, logits: Tensor, event_dims: int = 1) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) in nats, summed over the trailing ``event_dims``.

    Computed from logits as ``-BCEWithLogits`` (numerically stable for any logit). For
    ``x`` in (0, 1) this is the usual continuous cross-entropy "likelihood", which is not
    a normalised density: report it as such.

    Args:
        x: ``[..., *event]`` targets in [0, 1].
        logits: broadcastable to ``x``.

    Returns:
        ``[...]`` log-probabilities.
    """
    if _native_bernoulli_takes(x, logits, event_dims):
        d = math.prod(logits.shape[logits.dim() - event_dims :])
        need_grad = logits.requires_grad and torch.is_grad_enabled()
        out = _NativeBernoulli.apply(logits.view(-1, d), x.reshape(-1, d), need_grad)
        return out.view(logits.shape[: logits.dim() - event_dims])
    x, logits = torch.broadcast_tensors(x, logits)
    # Negate after the reduction: the same numbers, two passes over the data fewer.
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -sum_event(nll, event_dims)


def _native_bernoulli_takes(x: Tensor, logits: Tensor, event_dims: int) -> bool:
    """Whether :class:`_NativeBernoulli` computes :func:`log_bernoulli`: x ``[B, *event]``
    (or logits' shape) broadcast over logits ``[..., B, *event]``'s leading dimensions
    only, events of 16 numbers or more, both tensors as aevb's native kernels take them
    (:func:`aevb.native.takes`: float32 CPU, contiguous, non-empty, no transform), x
    without a gradient (data), the logits with or without one."""
    return (
        native.ENABLED
        and event_dims >= 1
        and 1 <= x.dim() <= logits.dim()
        and x.shape == logits.shape[logits.dim() - x.dim() :]
        and x.dim() >= event_dims
        and math.prod(x.shape[x.dim() - event_dims :]) >= 16
        and native.takes(x)
        and native.takes(logits, autograd=True)
    )


class _NativeBernoulli(torch.autograd.Function):
    """``sum_d x_d l_d - softplus(l_d)`` per row of logits ``[N, D]`` (x ``[B, D]``, row r
    against x's row r % B) and its gradient ``x - sigmoid(l)`` in one pass of C
    (:func:`aevb.native.bernoulli_grad`), where PyTorch's cross-entropy takes a forward
    pass, a sum and a backward pass (measured in docs/benchmarks.md, "Native kernels").
    The gradient is kept from the forward pass; a backward pass that builds a graph
    (``create_graph=True``: second derivatives) recomputes it with PyTorch's operators,
    differentiable again. In the logits only (x is data)."""

    @staticmethod
    def forward(ctx, logits: Tensor, x: Tensor, need_grad: bool) -> Tensor:  # type: ignore[override]
        out = logits.new_empty(logits.shape[0])
        grad = torch.empty_like(logits) if need_grad else None  # none under no_grad
        native.bernoulli_grad(logits, x, out, grad)
        ctx.save_for_backward(logits, x, grad)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        logits, x, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that is differentiable itself
            rows = x.repeat(logits.shape[0] // x.shape[0], 1)
            grad = rows - torch.sigmoid(logits)
        return grad * grad_out.unsqueeze(-1), None, None


# Products of at most this many factors in [1/2, 1) stay far from float32's underflow
# (2^-126) and within ~16 half-ulps of their exact value.
_PRODUCT_FACTORS = 16
# A product of sigmoids below this has left float32's full precision (normal numbers end at
# 2^-126): the sum is then taken the safe way.
_LOWEST_PRODUCT = 2.0**-100


def _block_products(g: Tensor) -> Tensor:
    """Products of up to 16 factors of ``g`` ``[N, D]``: the first half of the last dimension
    times the second, while its length is even: ``[N, D / 2^m]``, m <= 4, contiguous.

    In place in ``g`` but for the last halving, which writes a fresh contiguous tensor: the
    log, minimum and sum that follow run over a contiguous block of memory, not rows
    strided ``D`` apart (about 4x faster for their ``[N, 49]`` at D = 784).
    """
    n, factors = g.shape[-1], 1
    while n % 2 == 0 and factors < _PRODUCT_FACTORS:
        n, factors = n // 2, 2 * factors
        last = n % 2 == 1 or factors == _PRODUCT_FACTORS
        g = torch.mul(g[..., :n], g[..., n : 2 * n], out=None if last else g[..., :n])
    return g.contiguous()


def _fit(work: Tensor | None, like: Tensor) -> Tensor | None:
    """The first ``like.numel()`` elements of the buffer ``work``, shaped as ``like``."""
    return None if work is None else work.view(-1)[: like.numel()].view(like.shape)


def sum_softplus_(t: Tensor, work: Tensor | None = None) -> Tensor:
    """``sum_d softplus(t_d)`` over the last dimension, in place: ``t`` ``[..., D]`` is overwritten.

    ``softplus(t) = relu(t) - log sigmoid(|t|)``: the factors ``sigmoid(|t_d|)`` lie in
    [1/2, 1), so their products in blocks of 16 never underflow, and one log is taken per
    block (PyTorch's CPU sigmoid uses a fast vectorised exp; its softplus and log are
    1-ulp transcendentals several times slower). Within ~1e-7 nats per term of the exact
    value; where ``|t| > 17`` the float32 sigmoid rounds to 1, dropping ``e^-|t| < 4e-8``.
    The safe form behind :func:`sum_log_sigmoid_` (one more pass for the relu, one for |t|).

    Args:
        t: ``[..., D]`` real numbers (its storage is reused).
        work: optional buffer for ``relu(t)`` with at least as many elements as ``t``.

    Returns:
        ``[...]`` the sums.
    """
    relu_sum = torch.clamp_min(t, 0, out=_fit(work, t)).sum(-1)
    g = _block_products(t.abs_().sigmoid_())  # the factors in [1/2, 1)
    return relu_sum - g.log_().sum(-1)


def sum_log_sigmoid_(u: Tensor, work: Tensor | None = None) -> Tensor:
    """``sum_d log sigmoid(u_d)`` over the last dimension: ``[..., D]`` -> ``[...]``.

    The Bernoulli log-likelihood of binary x under logits l is this sum at
    ``u = (2x - 1) l``. The factors ``sigmoid(u_d)`` are multiplied in blocks of up to 16
    and one log is taken per block: one sigmoid pass (PyTorch's CPU sigmoid uses a fast
    vectorised exp; its log1p/softplus are 1-ulp transcendentals several times slower)
    and a sixteenth of the logs. A block whose product falls below 2^-100 (its 16 pixels
    cost more than 69 nats together: a badly fitting model) would lose precision; then
    those rows are summed by :func:`sum_softplus_` instead (never seen with a trained
    model: the smallest block of a 30-epoch binarized-MNIST VAE was 2^-23). ``u`` is
    overwritten only in that case. Checking the products is a host sync per group of
    samples: free on the CPU, the only device the evaluator runs this on.

    ``[S, B, D]`` samples are summed group by group, so that a sample's numbers do not
    depend on S (see :mod:`aevb.workspace`).

    Args:
        u: ``[..., D]`` real numbers.
        work: optional buffer for the sigmoids, with at least as many elements as ``u`` or,
            for ``[S, B, D]``, as one group (else a fresh tensor).

    Returns:
        ``[...]`` the sums (<= 0).
    """
    if u.dim() == 3:
        d = u.shape[-1]
        return torch.cat(
            [sum_log_sigmoid_(g.reshape(-1, d), work).view(g.shape[:-1]) for g in groups(u)]
        )
    g = _block_products(torch.sigmoid(u, out=_fit(work, u)))
    if float(g.amin()) >= _LOWEST_PRODUCT:
        return g.log_().sum(-1)
    return -sum_softplus_(u.neg_(), work)  # log sigmoid(u) = -softplus(-u)


def log_normal_sigma(x: Tensor, mu: Tensor, sigma: Tensor | float, event_dims: int = 1) -> Tensor:
    """log N(x; mu, sigma^2 I) with sigma given directly (fixed or learned, positive).

    Args:
        x: ``[..., *event]``.
        mu: broadcastable to ``x``.
        sigma: a float or a tensor broadcastable to ``x``, strictly positive.

    Returns:
        ``[...]`` log-densities in nats.
    """
    sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    log_p = -0.5 * LOG_2PI - torch.log(sigma_t) - 0.5 * ((x - mu) / sigma_t).pow(2)
    return sum_event(log_p, event_dims)


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """``log (1/K) sum_k exp(log_w_k)`` along ``dim``, stable via logsumexp."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


# --- Discretized logistic mixture ------------------------------------------------------
# Salimans, Karpathy, Chen & Kingma, "PixelCNN++: Improving the PixelCNN with Discretized
# Logistic Mixture Likelihood and Other Modifications" (2017), https://arxiv.org/abs/1701.05517
# (Sec. 2.1-2.2, and the reference code's ``discretized_mix_logistic_loss``).
#
# Shapes: images ``x`` are ``[..., C, H, W]`` with values k / (num_bins - 1), k = 0..num_bins-1;
# the parameters carry M mixture components:
#   logit_probs ``[..., M, H, W]``       mixture logits, one mixture per pixel (shared by channels)
#   means       ``[..., M, C, H, W]``    component means, in the rescaled [-1, 1] units
#   log_scales  ``[..., M, C, H, W]``    log of the logistic scale s, in the same units
#   coeffs      ``[..., M, K, H, W]``    unconstrained channel coefficients, K = C(C-1)/2
#                                        (squashed by tanh; ``None`` or K = 0 for C = 1)
# The leading ``...`` of parameters and data broadcast (samples S in front of the batch B).
#
# Channel i's mean depends linearly on the channels before it, which makes each pixel an
# autoregressive distribution over its C values (PixelCNN++ Sec. 2.2, for RGB):
#   mean_i = means_i + sum_{j < i} tanh(coeffs_(i,j)) * x_j,
# with the pairs (i, j), j < i, ordered row by row: for C = 3, (g,r), (b,r), (b,g), i.e.
#   mean_g = means_g + c0 * x_r,   mean_b = means_b + c1 * x_r + c2 * x_g.
DEFAULT_MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on log s; see log_discretized_logistic_mixture


def _channel_pairs(channels: int) -> list[tuple[int, int]]:
    """The (i, j), j < i, pairs of channel coefficients, in the order of ``coeffs``."""
    return [(i, j) for i in range(1, channels) for j in range(i)]


def _coupled_means(means: Tensor, coeffs: Tensor | None, x_scaled: Tensor) -> Tensor:
    """Per-component channel means with the linear dependence on earlier channels.

    Args:
        means: ``[..., M, C, H, W]``.
        coeffs: ``[..., M, C(C-1)/2, H, W]`` unconstrained (tanh applied here), or None.
        x_scaled: ``[..., 1, C, H, W]`` (or ``M`` in place of 1) values in [-1, 1] on which
            channel i is conditioned (only channels j < i are read).

    Returns:
        ``[..., M, C, H, W]``.
    """
    pairs = _channel_pairs(means.shape[-3])
    n_coeffs = 0 if coeffs is None else coeffs.shape[-3]
    if n_coeffs != len(pairs):
        raise ValueError(
            f"{means.shape[-3]} channels need {len(pairs)} coefficients per component, "
            f"got {n_coeffs}"
        )
    if not pairs:
        return means
    c = torch.tanh(coeffs)
    channel_means = list(means.unbind(-3))
    for k, (i, j) in enumerate(pairs):
        channel_means[i] = channel_means[i] + c[..., k, :, :] * x_scaled[..., j, :, :]
    # Coupled channels broadcast with the data; the first may not: bring them to one shape.
    return torch.stack(torch.broadcast_tensors(*channel_means), dim=-3)


def _log1mexp_of_log(log_t: Tensor) -> Tensor:
    """``log(1 - exp(-t))`` for ``t = exp(log_t) > 0``, finite with finite gradients.

    For ``t < 1e-4`` it uses ``log t - t/2`` (the next series term, ``t^2/24``, is below
    float32 precision), so huge scales (``t`` underflowing to 0) give neither -inf nor NaN
    gradients; otherwise ``log(-expm1(-t))``, accurate to float precision in absolute terms.
    """
    t = torch.exp(log_t)
    small = t < 1e-4
    t_safe = torch.where(small, torch.ones_like(t), t)  # keep the unused branch finite
    return torch.where(small, log_t - 0.5 * t, torch.log(-torch.expm1(-t_safe)))


def log_discretized_logistic_mixture_pixels(
    x: Tensor,
    logit_probs: Tensor,
    means: Tensor,
    log_scales: Tensor,
    coeffs: Tensor | None = None,
    num_bins: int = 256,
    min_log_scale: float = DEFAULT_MIN_LOG_SCALE,
) -> Tensor:
    """log P of each pixel of quantised images under a discretized logistic mixture
    (PixelCNN++ eq. 2); :func:`log_discretized_logistic_mixture` sums them over H and W.

    The image is rescaled to [-1, 1], where bin k has centre ``x_k = 2k/(num_bins-1) - 1``
    and half-width ``h = 1/(num_bins-1)`` (bin width ``2h = 2/255`` for 8 bits). With
    ``a = (x_k + h - mean)/s`` and ``b = (x_k - h - mean)/s`` one component gives the bin

    * k = 0:            ``sigmoid(a)``         (the whole left tail; log form ``-softplus(-a)``)
    * k = num_bins - 1: ``1 - sigmoid(b)``     (the whole right tail; ``-softplus(b)``)
    * otherwise:        ``sigmoid(a) - sigmoid(b)``

    so the masses of all bins telescope to exactly 1 (the edge bins absorb the tails).
    The interior difference is taken in log space through the exact identity
    ``sigmoid(a) - sigmoid(b) = sigmoid(a) * sigmoid(-b) * (1 - exp(-(a - b)))``, with
    ``a - b = 2h/s``:

        ``log P(k) = -softplus(-a) - softplus(b) + log(1 - exp(-2h/s))``,

    every term finite and accurate whatever the scale or distance from the mean. It
    replaces the reference code's two-branch rule, which switches (when the difference
    falls below 1e-5) to the density at the bin centre times the bin width,
    ``log pdf(x_k) + log(2h)`` with ``log(2h) = -log(127.5)`` for 8 bits: the midpoint rule
    for ``∫ pdf`` over the bin, where ``log pdf(x_k) = t - log s - 2 softplus(t)`` with
    ``t = (x_k - mean)/s``.
    That approximation is unnecessary here and would put a small jump into the loss.

    Scales are floored at ``log s >= min_log_scale`` (PixelCNN++ uses -7): a component
    centred on a bin then gives it at most ``tanh(h / (2 s)) ~= 0.973`` (8 bits, s = e^-7),
    a cap of about 0.027 nats per sub-pixel on interior bins that keeps ``1/s`` and the
    gradients bounded; edge bins can still reach probability 1 by a mean beyond the edge.
    Keep ``min_log_scale > -80`` (``exp(-log s)`` must not overflow float32).

    Args:
        x: ``[..., C, H, W]`` images with values on the grid ``k / (num_bins - 1)`` in [0, 1]
            (off-grid values are rounded to the nearest bin; check the data beforehand).
        logit_probs: ``[..., M, H, W]`` mixture logits (any real numbers).
        means: ``[..., M, C, H, W]`` component means in rescaled units (-1 = black bin centre).
        log_scales: ``[..., M, C, H, W]`` log scales in rescaled units.
        coeffs: ``[..., M, C(C-1)/2, H, W]`` unconstrained channel coefficients (``tanh``
            is applied here), or None when C = 1.
        num_bins: number of values per sub-pixel (256 for 8-bit data).
        min_log_scale: floor on ``log_scales``.

    Returns:
        ``[..., H, W]`` log-probabilities in nats of each pixel's C discrete values
        (``x`` and the parameters broadcast over the leading dimensions).

    Example:
        >>> x = torch.randint(0, 256, (4, 3, 2, 2)) / 255  # [B, C, H, W]
        >>> m = 5
        >>> logits, means, log_scales, coeffs = (
        ...     torch.randn(2, 4, m, 2, 2), torch.randn(2, 4, m, 3, 2, 2),
        ...     torch.randn(2, 4, m, 3, 2, 2), torch.randn(2, 4, m, 3, 2, 2))
        >>> log_discretized_logistic_mixture_pixels(x, logits, means, log_scales, coeffs).shape
        torch.Size([2, 4, 2, 2])
    """
    last = num_bins - 1
    half_bin = 1.0 / last
    k = torch.round(x * last)  # the bin index of each sub-pixel
    x_scaled = (2.0 * half_bin * k - 1.0).unsqueeze(-4)  # [..., 1, C, H, W]: exact bin centres
    centred = x_scaled - _coupled_means(means, coeffs, x_scaled)  # [..., M, C, H, W]
    log_s = log_scales.clamp(min=min_log_scale)
    inv_s = torch.exp(-log_s)
    upper = inv_s * (centred + half_bin)  # a: the bin's upper edge in standard units
    lower = inv_s * (centred - half_bin)  # b: its lower edge
    log_cdf_upper = F.logsigmoid(upper)  # log sigmoid(a)
    log_sf_lower = F.logsigmoid(-lower)  # log(1 - sigmoid(b))
    log_interior = log_cdf_upper + log_sf_lower + _log1mexp_of_log(math.log(2.0 * half_bin) - log_s)
    is_first, is_last = (k == 0).unsqueeze(-4), (k == last).unsqueeze(-4)
    log_p = torch.where(is_first, log_cdf_upper, torch.where(is_last, log_sf_lower, log_interior))
    # A pixel's C values share the component: multiply over C, then mix (logsumexp over M).
    log_p_joint = log_p.sum(dim=-3) + F.log_softmax(logit_probs, dim=-3)  # [..., M, H, W]
    return torch.logsumexp(log_p_joint, dim=-3)  # [..., H, W]


def log_discretized_logistic_mixture(
    x: Tensor,
    logit_probs: Tensor,
    means: Tensor,
    log_scales: Tensor,
    coeffs: Tensor | None = None,
    num_bins: int = 256,
    min_log_scale: float = DEFAULT_MIN_LOG_SCALE,
) -> Tensor:
    """log P(x) of quantised images under a discretized logistic mixture (PixelCNN++ eq. 2):
    :func:`log_discretized_logistic_mixture_pixels` summed over H and W.

    Returns:
        ``[...]`` log-probabilities in nats of the discrete values, summed over C, H, W.

    Example:
        >>> x = torch.randint(0, 256, (4, 3, 2, 2)) / 255  # [B, C, H, W]
        >>> m = 5
        >>> logits, means, log_scales, coeffs = (
        ...     torch.randn(2, 4, m, 2, 2), torch.randn(2, 4, m, 3, 2, 2),
        ...     torch.randn(2, 4, m, 3, 2, 2), torch.randn(2, 4, m, 3, 2, 2))
        >>> log_discretized_logistic_mixture(x, logits, means, log_scales, coeffs).shape
        torch.Size([2, 4])
    """
    return log_discretized_logistic_mixture_pixels(
        x, logit_probs, means, log_scales, coeffs, num_bins, min_log_scale
    ).sum(dim=(-2, -1))


def _pick_component(t: Tensor, component: Tensor) -> Tensor:
    """``t`` ``[..., M, C, H, W]`` at ``component`` ``[..., H, W]`` -> ``[..., C, H, W]``."""
    index = component[..., None, None, :, :].expand(*t.shape[:-4], 1, *t.shape[-3:])
    return t.gather(-4, index).squeeze(-4)


@torch.no_grad()
def sample_discretized_logistic_mixture(
    logit_probs: Tensor,
    means: Tensor,
    log_scales: Tensor,
    coeffs: Tensor | None = None,
    num_bins: int = 256,
    min_log_scale: float = DEFAULT_MIN_LOG_SCALE,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw quantised images from the mixture of :func:`log_discretized_logistic_mixture`.

    Per pixel: a component by the Gumbel-max trick, then the channels in order, each a
    logistic draw ``mean + s * logit(u)`` rounded to the nearest bin and clipped to the edge
    bins. Later channels are conditioned on the *quantised* earlier values, exactly as
    ``log_prob`` conditions on the data; the reference code conditions on the continuous
    clipped draw instead, which is not the distribution it scores.

    Args:
        logit_probs, means, log_scales, coeffs, num_bins, min_log_scale: as in
            :func:`log_discretized_logistic_mixture`; all with the same leading dims.
        generator: optional torch.Generator for the noise.

    Returns:
        ``[..., C, H, W]`` values ``k / (num_bins - 1)`` in [0, 1] (no gradient).
    """
    last = num_bins - 1
    gen = dict(dtype=means.dtype, device=means.device, generator=generator)
    u_mix = torch.rand(logit_probs.shape, **gen)
    gumbel = -torch.log(-torch.log(u_mix))  # u = 0 gives -inf, never chosen: harmless
    component = torch.argmax(logit_probs + gumbel, dim=-3)  # [..., H, W]
    mean = _pick_component(means, component)  # [..., C, H, W]
    scale = _pick_component(log_scales.clamp(min=min_log_scale), component).exp()
    coeff = None if coeffs is None else torch.tanh(_pick_component(coeffs, component))
    # Standard logistic noise; u = 0 gives -inf, which lands in bin 0 as it should.
    noise = torch.logit(torch.rand(mean.shape, **gen))
    bins, x_scaled = [], []  # per channel: bin index, value in [-1, 1]
    pairs = _channel_pairs(means.shape[-3])
    for i in range(means.shape[-3]):
        mean_i = mean[..., i, :, :]
        for k, (row, j) in enumerate(pairs):
            if row == i:
                mean_i = mean_i + coeff[..., k, :, :] * x_scaled[j]
        y = mean_i + scale[..., i, :, :] * noise[..., i, :, :]
        k_i = torch.round((y + 1.0) * (last / 2.0)).clamp(0, last)
        bins.append(k_i)
        x_scaled.append(2.0 * k_i / last - 1.0)
    return torch.stack(bins, dim=-3) / last


def _clipped_logistic_mean(mean: Tensor, scale: Tensor) -> Tensor:
    """``E[clip(Y, -1, 1)]`` for ``Y ~ Logistic(mean, scale)``, elementwise.

    ``E[clip(Y, a, b)] = a + ∫_a^b P(Y > t) dt = a + s (softplus((m-a)/s) - softplus((m-b)/s))``.
    Written for ``|m|`` and mirrored (the value is odd in m), so that a mean far outside
    [-1, 1] with a small scale does not subtract two huge softplus values.
    """
    m = mean.abs()
    inner = 1.0 - scale * (F.softplus((1.0 - m) / scale) - F.softplus((-1.0 - m) / scale))
    return torch.sign(mean) * inner


def mean_discretized_logistic_mixture(
    logit_probs: Tensor,
    means: Tensor,
    log_scales: Tensor,
    coeffs: Tensor | None = None,
    min_log_scale: float = DEFAULT_MIN_LOG_SCALE,
) -> Tensor:
    """The expected image of the mixture, in [0, 1] (for pictures of E[x|z]).

    Each component contributes the mean of its logistic clipped to [-1, 1], the continuous
    version of what the edge bins do (they absorb the tails): for ``Y ~ Logistic(m, s)``,

        ``E[clip(Y, -1, 1)] = -1 + s * (softplus((m + 1)/s) - softplus((m - 1)/s))``

    (see :func:`_clipped_logistic_mean`), not the clipped mean ``clip(m)``, which is wrong
    for a broad component near an edge. It differs from the mean of the discretized
    values by at most half a bin (1/510 for 8 bits) for C = 1. For C > 1 the earlier
    channels enter a component's later means through their component expectations, which
    is exact while no clipping happens (the means are linear in them) and an approximation
    near the edges (the exact value would need a sum over all earlier channel values).
    Components are weighted by ``softmax(logit_probs)``; the result is clamped to [0, 1]
    only against round-off.

    Args:
        logit_probs, means, log_scales, coeffs, min_log_scale: as in
            :func:`log_discretized_logistic_mixture`.

    Returns:
        ``[..., C, H, W]`` in [0, 1].
    """
    scale = torch.exp(log_scales.clamp(min=min_log_scale))  # [..., M, C, H, W]
    pairs = _channel_pairs(means.shape[-3])
    if (0 if coeffs is None else coeffs.shape[-3]) != len(pairs):
        raise ValueError(f"{means.shape[-3]} channels need {len(pairs)} coefficients")
    coeff = None if coeffs is None else torch.tanh(coeffs)
    expected = []  # per channel: [..., M, H, W] component means of the clipped value
    for i in range(means.shape[-3]):
        mean_i = means[..., i, :, :]
        for k, (row, j) in enumerate(pairs):
            if row == i:
                mean_i = mean_i + coeff[..., k, :, :] * expected[j]
        expected.append(_clipped_logistic_mean(mean_i, scale[..., i, :, :]))
    weights = torch.softmax(logit_probs, dim=-3).unsqueeze(-3)  # [..., M, 1, H, W]
    mean_scaled = (weights * torch.stack(expected, dim=-3)).sum(dim=-4)  # [..., C, H, W]
    return ((mean_scaled + 1.0) / 2.0).clamp(0.0, 1.0)


# --- categorical latents: the Gumbel-softmax (Concrete) relaxation ------------------------
# Jang, Gu & Poole, "Categorical Reparameterization with Gumbel-Softmax" (2016),
# https://arxiv.org/abs/1611.01144; Maddison, Mnih & Teh, "The Concrete Distribution" (2016),
# https://arxiv.org/abs/1611.00712. Shapes: N categorical variables of C classes each,
# ``[..., N, C]`` (logits, one-hots, uniform noise); log-probabilities sum over the N.


def gumbel_noise(u: Tensor) -> Tensor:
    """Gumbel(0, 1) noise ``g = -log(-log u)`` from uniform noise ``u`` in [0, 1).

    ``u`` is clamped to [tiny, 1 - eps/2] first, so ``u = 0`` (which ``torch.rand`` can
    return) and ``u = 1`` give finite noise instead of -inf / +inf.

    Args:
        u: ``[...]`` uniform noise (e.g. from ``NoiseSpec("uniform", (N, C))``).

    Returns:
        ``[...]`` Gumbel noise, same shape and dtype.
    """
    info = torch.finfo(u.dtype)
    u = u.clamp(info.tiny, 1.0 - info.eps / 2)
    return -torch.log(-torch.log(u))


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass.

    Written ``hard + (soft - soft.detach())`` rather than ``hard - soft.detach() + soft``:
    ``soft - soft.detach()`` is exactly 0, so the forward value is ``hard`` bit for bit
    (the other order rounds, e.g. ``(1 - y) + y`` need not be 1 in floating point).

    Args:
        hard, soft: tensors of one shape ``[...]``.

    Returns:
        ``[...]`` equal to ``hard``, with ``d out / d soft = 1``.
    """
    return hard + (soft - soft.detach())


def gumbel_softmax(logits: Tensor, u: Tensor, tau: float, hard: bool = False) -> Tensor:
    """Relaxed one-hot samples ``y = softmax((log pi + g) / tau)`` (Jang et al., eq. 2).

    ``log pi = log_softmax(logits)``, ``g = gumbel_noise(u)``. As ``tau -> 0`` the samples
    approach the one-hot ``gumbel_max(logits, u)``. With ``hard=True`` the forward pass
    returns that one-hot exactly and the backward pass the gradient of the relaxed ``y``
    (the straight-through Gumbel-softmax estimator, Jang et al., section 2.2).

    Args:
        logits: ``[..., N, C]`` unnormalised log-probabilities (broadcastable to ``u``).
        u: ``[..., N, C]`` uniform noise in [0, 1).
        tau: temperature > 0.
        hard: straight-through one-hot forward pass.

    Returns:
        ``[..., N, C]`` points of the simplex (one-hots with ``hard=True``).
    """
    if tau <= 0:
        raise ValueError(f"the Gumbel-softmax temperature must be > 0, got {tau}")
    y = torch.softmax((F.log_softmax(logits, dim=-1) + gumbel_noise(u)) / tau, dim=-1)
    if not hard:
        return y
    y_hard = F.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return straight_through(y_hard, y)


def gumbel_max(logits: Tensor, u: Tensor) -> Tensor:
    """Exact categorical samples as one-hots: ``one_hot(argmax(logits + g))`` (Jang et al., eq. 1).

    Args:
        logits: ``[..., N, C]`` (broadcastable to ``u``).
        u: ``[..., N, C]`` uniform noise in [0, 1).

    Returns:
        ``[..., N, C]`` one-hots in ``logits``' dtype, without gradient.
    """
    idx = (logits.detach() + gumbel_noise(u)).argmax(-1)
    return F.one_hot(idx, logits.shape[-1]).to(logits.dtype)


def log_categorical(onehot: Tensor, logits: Tensor) -> Tensor:
    """log Cat(z; softmax(logits)) in nats for one-hot ``z``, summed over the N variables.

    For a relaxed (non one-hot) ``z`` this is the cross-entropy ``sum z log pi``, not a
    density of the relaxed sample.

    Args:
        onehot: ``[..., N, C]`` one-hots.
        logits: ``[..., N, C]`` finite logits, broadcastable to ``onehot``.

    Returns:
        ``[...]`` log-probabilities.
    """
    return (onehot * F.log_softmax(logits, dim=-1)).sum((-2, -1))


def categorical_kl_uniform(logits: Tensor) -> Tensor:
    """KL(Cat(softmax(logits)) || Uniform(C)) per variable, in nats (exact).

    ``KL = sum_c pi_c log(pi_c C) = sum_c pi_c log pi_c + log C``: 0 at the uniform
    posterior, at most ``log C`` (a deterministic one).

    Args:
        logits: ``[..., N, C]`` finite logits.

    Returns:
        ``[..., N]`` KL of each categorical variable.
    """
    log_pi = F.log_softmax(logits, dim=-1)
    return (log_pi.exp() * log_pi).sum(-1) + math.log(logits.shape[-1])
