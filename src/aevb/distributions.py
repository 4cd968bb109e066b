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
    x, logits = torch.broadcast_tensors(x, logits)
    # Negate after the reduction: the same numbers, two passes over the data fewer.
    nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return -sum_event(nll, event_dims)


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
