"""Estimates of log p(x): importance-sampled, naive, and the diagnostics around them.

* Importance-weighted estimate (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted
  Autoencoders", https://arxiv.org/abs/1509.00519, eq. 8):
  ``log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K``,
  ``z_k ~ q(z|x)``. A lower bound in expectation that rises to log p(x) as K grows.
* Naive estimate ``log (1/n) sum_i p(x|z_i)``, ``z_i ~ p(z)``: no encoder, unbiased for
  p(x) but, in high-dimensional latent spaces, so dominated by rare samples that its log
  is far below log p(x) for any practical n. Shown beside the IW estimate to see why
  importance sampling is needed.
* Active units (Burda et al., section 5.2): latent j is active when
  ``Cov_x(E_q[z_j | x]) > 0.01``.

Everything is batched over examples and chunked over samples: at most ``chunk_size``
(example, sample) pairs go through the decoder at once, so memory is bounded whatever K.
The noise for sample k of a batch is seeded by (seed, batch, k), so results do not depend
on the chunk size. Per-example tensors are ``[B]`` in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .distributions import gaussian_kl_per_dim


def sample_noise(
    seed: int,
    k0: int,
    k1: int,
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard-normal noise ``[k1 - k0, *shape]`` where slice k depends only on (seed, k)."""
    g = torch.Generator(device=device)
    out = torch.empty((k1 - k0, *shape), device=device, dtype=dtype)
    for k in range(k0, k1):
        g.manual_seed(seed * 1_000_003 + k)
        out[k - k0].normal_(generator=g)
    return out


def chunk_samples(k: int, batch: int, chunk_size: int) -> int:
    """Samples per chunk so that ``samples * batch <= chunk_size`` (at least one)."""
    return max(1, min(k, chunk_size // max(batch, 1)))


@torch.inference_mode()
def importance_weighted(
    model: nn.Module, x: Tensor, k: int, chunk_size: int = 2048, seed: int = 0
) -> dict[str, Tensor]:
    """IW estimate of log p(x) and, from the same samples, the ELBO's two terms.

    Args:
        model: exposes ``encode``, ``log_likelihood``, ``log_prior``, ``log_posterior``, ``kl``.
        x: ``[B, *event]`` a batch of data.
        k: number of importance samples K per example.
        chunk_size: most (example, sample) pairs decoded at once (bounds memory).
        seed: seeds the noise; sample k's noise depends only on (seed, k).

    Returns:
        Per-example ``[B]`` tensors in nats: ``log_px_iw``; ``distortion`` (-mean_k log p(x|z_k),
        the reconstruction NLL); ``rate`` (closed-form KL(q || p)); ``neg_elbo``
        (distortion + rate); ``gap`` (log_px_iw + neg_elbo, an estimate of KL(q(z|x) || p(z|x)));
        and ``kl_per_dim`` ``[B, D]``, ``mu`` ``[B, D]``.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    b = x.shape[0]
    c = chunk_samples(k, b, chunk_size)
    lse = torch.full((b,), -math.inf, device=x.device, dtype=mu.dtype)
    sum_log_px_z = torch.zeros(b, device=x.device, dtype=mu.dtype)
    for k0 in range(0, k, c):
        k1 = min(k, k0 + c)
        z = mu + std * sample_noise(seed, k0, k1, tuple(mu.shape), x.device, mu.dtype)  # [c, B, D]
        log_px_z = model.log_likelihood(x, z)  # [c, B]
        log_w = log_px_z + model.log_prior(z) - model.log_posterior(z, mu, logvar)
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
        sum_log_px_z += log_px_z.sum(dim=0)
    log_px_iw = lse - math.log(k)
    distortion = -sum_log_px_z / k
    rate = model.kl(mu, logvar)
    neg_elbo = distortion + rate
    return {
        "log_px_iw": log_px_iw,
        "distortion": distortion,
        "rate": rate,
        "neg_elbo": neg_elbo,
        "gap": log_px_iw + neg_elbo,
        "kl_per_dim": gaussian_kl_per_dim(mu, logvar),
        "mu": mu,
    }


@torch.inference_mode()
def naive_prior(
    model: nn.Module, x: Tensor, n: int, chunk_size: int = 2048, seed: int = 0
) -> Tensor:
    """Naive Monte-Carlo ``log (1/n) sum_i p(x|z_i)``, ``z_i ~ p(z)``: ``[B, *event]`` -> ``[B]``.

    The same prior samples are shared by all examples of the batch (they do not depend
    on x). Unbiased for p(x), biased low for log p(x); hopeless in high dimensions.
    """
    b = x.shape[0]
    c = chunk_samples(n, b, chunk_size)
    dtype = next(model.parameters()).dtype
    lse = torch.full((b,), -math.inf, device=x.device, dtype=dtype)
    dim = model.config.latent_dim
    for k0 in range(0, n, c):
        k1 = min(n, k0 + c)
        # Decode each prior sample once ([c, 1, D]) and score it against all B examples.
        z = sample_noise(seed, k0, k1, (1, dim), x.device, dtype)
        lse = torch.logaddexp(lse, torch.logsumexp(model.log_likelihood(x, z), dim=0))
    return lse - math.log(n)


def active_units(
    mu_sum: Tensor, mu_sq_sum: Tensor, n: int, threshold: float = 0.01
) -> tuple[int, Tensor]:
    """Count latents with ``Cov_x(E_q[z_j|x]) > threshold`` from per-dimension sums of mu.

    Args:
        mu_sum, mu_sq_sum: ``[D]`` sums over n examples of mu_j and mu_j^2 (float64).

    Returns:
        ``(count, [D] variances)``.
    """
    mean = mu_sum / n
    var = (mu_sq_sum / n - mean.pow(2)).clamp_min(0) * n / max(n - 1, 1)
    return int((var > threshold).sum()), var


def bits_per_dim(log_px: Tensor, num_dims: int) -> Tensor:
    """``-log p(x) / (num_dims * ln 2)``: nats per example -> bits per data dimension."""
    return -log_px / (num_dims * math.log(2.0))
