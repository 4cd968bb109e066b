"""Estimates of log p(x): importance-sampled, naive, and the diagnostics around them.

* Importance-weighted estimate (Burda, Grosse & Salakhutdinov 2015, "Importance Weighted
  Autoencoders", https://arxiv.org/abs/1509.00519, eq. 8):
  ``log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K``,
  ``z_k ~ q(z|x)``. A lower bound in expectation that rises to log p(x) as K grows. The
  weights come from :func:`aevb.objectives.importance_terms`, the function the IWAE
  objective trains with.
* Naive estimate ``log (1/n) sum_i p(x|z_i)``, ``z_i ~ p(z)``: no encoder, unbiased for
  p(x) but, in high-dimensional latent spaces, so dominated by rare samples that its log
  is far below log p(x) for any practical n. Shown beside the IW estimate to see why
  importance sampling is needed.
* Active units (Burda et al., section 5.2): latent j is active when
  ``Cov_x(E_q[z_j | x]) > 0.01``.

Everything is written against the model interface (:mod:`aevb.models.base`), so it holds
for every model. Batched over examples and chunked over samples: a chunk is at most
``chunk_size`` (example, sample) pairs (or one group of :func:`aevb.workspace.group_size`
samples, fewer than 64 + B pairs, if that is more), and at most a few chunks per worker
thread are in memory at once (one thread computes them unless the CPU has several), so
memory is bounded whatever K. The noise of sample k of a batch depends only on (seed, k); chunks
are whole groups of samples, each computed by the same calls whatever the chunk
(:mod:`aevb.workspace`: matmuls and transcendentals group by group); and the samples are
reduced in fixed blocks whatever the chunks (:class:`SampleReducer`), so results are
bit-identical for every chunk size. On a CPU with several threads every operation runs on
one thread and the chunks on up to as many worker threads (:class:`aevb.workspace.Workers`),
reduced in order: the numbers of a one-thread run. The likelihood is prepared once per
batch and worker (``model.log_likelihood_fn``: the per-example work done once, the
decoder's last layer fused with the likelihood where the model offers it). A
deterministic posterior (a point mass) needs one sample, whatever K.
Per-example tensors are ``[B]`` in nats.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import native
from .latents import NoiseSpec
from .models.base import LatentVariableModel
from .objectives import importance_terms
from .workspace import Workers, group_size


def sample_noise(
    noise: NoiseSpec,
    seed: int,
    k0: int,
    k1: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Base noise ``[k1 - k0, batch, *noise.shape]`` where slice k depends only on (seed, k):
    what a generator seeded with ``seed * 1_000_003 + k`` draws (on a CPU, normal noise in
    one call of aevb's native kernel where it loads: the same numbers to float32 rounding,
    at twice the speed of the per-k ``normal_`` calls)."""
    g = torch.Generator(device=device)
    out = torch.empty((k1 - k0, batch, *noise.shape), device=device, dtype=dtype)
    if noise.deterministic:
        return out
    rows = out.view(k1 - k0, batch * math.prod(noise.shape))
    if noise.kind == "normal" and native.normal_rows_take(rows):
        native.normal_rows(rows, seed * 1_000_003 + k0)
        return out
    for k in range(k0, k1):
        g.manual_seed((seed * 1_000_003 + k) % 2**64)  # what torch takes, for any seed >= 0
        noise.fill_(out[k - k0], g)
    return out


def chunk_samples(k: int, batch: int, chunk_size: int) -> int:
    """Samples per chunk: whole groups of :func:`aevb.workspace.group_size` samples (the
    same groups whatever the chunk size), as many as ``samples * batch <= chunk_size``
    allows, at least one group (and no more than k)."""
    g = group_size(batch)
    return min(k, max(g, chunk_size // max(batch, 1) // g * g))


# Samples are reduced in fixed blocks of this many, whatever the chunks they were drawn in.
REDUCE_BLOCK = 64


class SampleReducer:
    """logsumexp and sums over samples, in fixed blocks of samples, whatever the chunking.

    Chunks of samples ``[c, B, ...]`` arrive in order; they are reduced in blocks of
    ``REDUCE_BLOCK`` samples (the last one shorter), and the blocks are combined in order:
    the same operations on the same numbers for every chunk size, so the result is
    bit-identical whatever the chunk size. Memory stays at one block; the reductions are in
    float64 (returned as such).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Tensor, ...]] = []
        self.rows = 0
        self.lse: Tensor | None = None  # logsumexp of the first quantity
        self.sums: list[Tensor] | None = None  # sums of the others

    def add(self, log_w: Tensor, *others: Tensor) -> None:
        """One chunk: ``log_w`` ``[c, B]`` and other per-sample quantities ``[c, B, ...]``."""
        self.pending.append((log_w, *others))
        self.rows += len(log_w)
        if self.rows >= REDUCE_BLOCK:
            self._reduce(final=False)

    def _reduce(self, final: bool) -> None:
        parts = [torch.cat(t) if len(t) > 1 else t[0] for t in zip(*self.pending, strict=True)]
        n = len(parts[0])
        stop = n if final else n - n % REDUCE_BLOCK
        for a in range(0, stop, REDUCE_BLOCK):
            # float64: K = 5000 samples are ~80 blocks, combined without float32 rounding
            block = [t[a : min(a + REDUCE_BLOCK, stop)].double() for t in parts]
            lse = torch.logsumexp(block[0], dim=0)
            sums = [t.sum(0) for t in block[1:]]
            self.lse = lse if self.lse is None else torch.logaddexp(self.lse, lse)
            self.sums = (
                sums if self.sums is None else [s + t for s, t in zip(self.sums, sums, strict=True)]
            )
        self.pending = [tuple(t[stop:] for t in parts)] if stop < n else []
        self.rows = n - stop

    def result(self) -> tuple[Tensor, list[Tensor]]:
        """``(logsumexp of log_w [B], [sum of each other quantity])``."""
        if self.rows:
            self._reduce(final=True)
        assert self.lse is not None and self.sums is not None, "no samples were added"
        return self.lse, self.sums


@torch.inference_mode()
def importance_weighted(
    model: LatentVariableModel,
    x: Tensor,
    k: int,
    chunk_size: int = 4096,
    seed: int = 0,
    y: Tensor | None = None,
) -> dict[str, Tensor]:
    """IW estimate of log p(x) and, from the same samples, the ELBO's two terms.

    Args:
        model: any aevb model.
        x: ``[B, *event]`` a batch of data (``y`` its context for a conditional model).
        k: number of importance samples K per example.
        chunk_size: most (example, sample) pairs of a chunk (bounds memory: a few chunks per
            worker thread; at least one group of samples, see :func:`chunk_samples`).
        seed: seeds the noise; sample k's noise depends only on (seed, k).

    Returns:
        Per-example tensors in nats: ``log_px_iw`` ``[B]``; ``distortion``
        (-mean_k log p(x|z_k)); ``rate`` (the closed-form KL(q || p) when the model has one,
        else the Monte-Carlo mean of log q - log p); ``neg_elbo`` (distortion + rate);
        ``gap`` (log_px_iw + neg_elbo, an estimate of KL(q(z|x) || p(z|x))); ``rate_groups``
        ``[B, G]``; ``kl_per_dim`` ``[B, D]`` where the KL factorises; ``summary``
        ``[B, m]`` (the posterior summary, for active units).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    # On a CPU with several threads: every operation on one thread, the chunks on workers.
    # A point mass is one sample, one chunk whatever the chunk size: all threads on it.
    with Workers(x.device, enabled=not model.latent.noise.deterministic) as workers:
        return _importance_weighted(model, x, k, chunk_size, seed, y, workers)


def _importance_weighted(
    model: LatentVariableModel,
    x: Tensor,
    k: int,
    chunk_size: int,
    seed: int,
    y: Tensor | None,
    workers: Workers,
) -> dict[str, Tensor]:
    y = model.context(x, y)
    q, p = model.posterior(x, y), model.prior(y)
    noise = q.noise
    b = x.shape[0]
    k_eff = 1 if noise.deterministic else k  # all samples of a point mass are one
    c = chunk_samples(k_eff, b, chunk_size)
    summary = q.summary()
    dtype = summary.dtype if summary.is_floating_point() else torch.float32
    kl = model.kl(q, p)

    def chunk(k0: int) -> tuple[Tensor, ...]:
        # the per-example work once per worker, for all its chunks
        log_px_z_of = workers.local(lambda: model.log_likelihood_fn(x, y))
        eps = sample_noise(noise, seed, k0, min(k_eff, k0 + c), b, x.device, dtype)
        t = importance_terms(model, x, q, p, eps, y, log_likelihood=log_px_z_of)
        mc_rate = () if kl is not None else (t.log_qz - t.log_pz,)  # [c, B, G]
        return (t.log_w.to(dtype), t.log_px_z.to(dtype), *mc_rate)

    reducer = SampleReducer()
    for terms in workers.map(chunk, range(0, k_eff, c)):
        reducer.add(*terms)
    lse, (sum_log_px_z, *sum_rate) = reducer.result()
    log_px_iw = (lse - math.log(k_eff)).to(dtype)
    distortion = (-sum_log_px_z / k_eff).to(dtype)
    rate_groups = kl.groups if kl is not None else (sum_rate[0] / k_eff).to(dtype)
    rate = rate_groups.sum(-1)
    neg_elbo = distortion + rate
    out = {
        "log_px_iw": log_px_iw,
        "distortion": distortion,
        "rate": rate,
        "neg_elbo": neg_elbo,
        "gap": log_px_iw + neg_elbo,
        "rate_groups": rate_groups,
        "summary": summary.to(dtype),
    }
    if kl is not None and kl.per_dim is not None:
        out["kl_per_dim"] = kl.per_dim
    return out


@torch.inference_mode()
def naive_prior(
    model: LatentVariableModel,
    x: Tensor,
    n: int,
    chunk_size: int = 4096,
    seed: int = 0,
    y: Tensor | None = None,
) -> Tensor:
    """Naive Monte-Carlo ``log (1/n) sum_i p(x|z_i)``, ``z_i ~ p(z)``: ``[B, *event]`` -> ``[B]``.

    The same prior samples are shared by all examples of the batch (they do not depend
    on x), unless the prior is one per example (a conditional prior p(z|y): then each
    example draws its own); sample i depends only on (seed, i). Unbiased for p(x), biased
    low for log p(x); hopeless in high dimensions.
    """
    with Workers(x.device) as workers:  # as importance_weighted
        return _naive_prior(model, x, n, chunk_size, seed, y, workers)


def _naive_prior(
    model: LatentVariableModel,
    x: Tensor,
    n: int,
    chunk_size: int,
    seed: int,
    y: Tensor | None,
    workers: Workers,
) -> Tensor:
    b = x.shape[0]
    c = chunk_samples(n, b, chunk_size)
    y = model.context(x, y)
    prior = model.prior(y)
    rows = b if prior.batched else 1
    dtype = next(model.parameters()).dtype
    lse = torch.full((b,), -math.inf, device=x.device, dtype=dtype)

    def chunk(k0: int) -> Tensor:
        g = torch.Generator(device=x.device)
        zs = []
        for i in range(k0, min(n, k0 + c)):
            g.manual_seed((seed * 1_000_003 + i) % 2**64)
            zs.append(prior.sample(rows, 1.0, generator=g))
        z = torch.stack(zs)  # [c, 1 or B, *z]: a shared z is decoded once, scored against all B
        return torch.logsumexp(model.log_likelihood(x, z, y), dim=0)

    for chunk_lse in workers.map(chunk, range(0, n, c)):  # combined in order
        lse = torch.logaddexp(lse, chunk_lse)
    return lse - math.log(n)


def active_units(
    mu_sum: Tensor, mu_sq_sum: Tensor, n: int, threshold: float = 0.01
) -> tuple[int, Tensor]:
    """Count latents with ``Cov_x(E_q[z_j|x]) > threshold`` from per-dimension sums of E_q[z].

    Args:
        mu_sum, mu_sq_sum: ``[D]`` sums over n examples of E_q[z_j] and its square (float64).

    Returns:
        ``(count, [D] variances)``.
    """
    mean = mu_sum / n
    var = (mu_sq_sum / n - mean.pow(2)).clamp_min(0) * n / max(n - 1, 1)
    return int((var > threshold).sum()), var


def bits_per_dim(log_px: Tensor, num_dims: int) -> Tensor:
    """``-log p(x) / (num_dims * ln 2)``: nats per example -> bits per data dimension.

    Honest only when ``log_px`` is the log of a *probability* of the data's discrete values
    (a Bernoulli on binary data, the discretized logistic mixture on 8-bit data); of a
    density it depends on the data's scale (see :func:`dequantized_bits_per_dim`).
    """
    return -log_px / (num_dims * math.log(2.0))


def dequantized_bits_per_dim(log_py: Tensor, num_dims: int, levels: int = 256) -> Tensor:
    """Bits per dimension of 8-bit data under a continuous density p, by uniform dequantisation.

    Data x = v/255 (v = 0..levels-1); bin v is ``[(v - 1/2)/255, (v + 1/2)/255)``, of width
    ``1/255`` per dimension, and ``y = x + (u - 1/2)/255`` with ``u ~ U(0, 1)^D`` is a point
    drawn uniformly in x's bin. The density defines the discrete model
    ``P(v) = integral of p over the bin = 255^-D * E_u[p(y)]``, so by Jensen's inequality

        ``-log P(v) = D log 255 - log E_u[p(y)] <= E_u[-log p(y)] + D log 255``

    (Theis, van den Oord & Bethge 2016, https://arxiv.org/abs/1511.01844, sec. 3.1; the
    form ``-log p(x + u) + D log 256`` is the same bound for data scaled to (v + u)/256).
    In bits per dimension: ``(-log p(y) + D log 255) / (D ln 2) = -log p(y) / (D ln 2) +
    log2 255``. With log p(y) itself a K-sample importance-weighted estimate (a lower bound
    in expectation), the result is an upper bound in expectation on the bits/dim of P:
    a codelength that the continuous model achieves, comparable with discrete models.

    Args:
        log_py: ``[B]`` log-density (nats) at one dequantised point y per example.
        num_dims: D, the dimensions scored.
        levels: values per dimension (256 for 8-bit data; bins of width 1/(levels - 1)).

    Returns:
        ``[B]`` bits per dimension.
    """
    d = num_dims
    return (-log_py + d * math.log(levels - 1)) / (d * math.log(2.0))
