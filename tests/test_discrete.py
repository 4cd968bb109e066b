"""Discrete latents: Gumbel-softmax, categorical KL, vector quantiser, gated PixelCNN prior.

Properties, not shapes: sampler frequencies against the softmax by a chi-square test, closed
forms against direct sums and torch.distributions, the quantiser against brute-force
``torch.cdist`` and the EMA update against its formula, bit-exact state round trips, 2
gloo processes against 1, the PixelCNN's causality and normalisation by enumeration.
float64 where a comparison is meant to be exact up to rounding.
"""

from __future__ import annotations

import io
import itertools
import math
import multiprocessing as mp
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.stats import chisquare
from torch.distributions import OneHotCategorical

from aevb.discrete import (
    CodePosterior,
    PixelCNNCodePrior,
    RelaxedCategoricalPosterior,
    UniformCategoricalPrior,
    UniformCodePrior,
)
from aevb.distributions import (
    categorical_kl_uniform,
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    log_categorical,
)
from aevb.latents import NoiseSpec, kl_divergence
from aevb.pixelcnn import GatedPixelCNN
from aevb.quantizer import VectorQuantizer

DT = torch.float64
pytestmark = pytest.mark.timeout(120)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(b: int = 3, n: int = 4, c: int = 5, seed: int = 0) -> torch.Tensor:
    return 1.5 * torch.randn(b, n, c, generator=_gen(seed), dtype=DT)


# --- Gumbel-softmax ---------------------------------------------------------------------------
def test_gumbel_noise_is_finite_at_the_ends_of_the_unit_interval():
    u = torch.tensor([0.0, 1e-45, 0.5, 1.0 - 2**-24, 1.0])
    g = gumbel_noise(u)
    assert torch.isfinite(g).all()
    assert torch.all(g[1:] >= g[:-1])  # monotone in u


def test_gumbel_max_class_frequencies_match_softmax():
    logits = torch.tensor([[2.0, 0.5, 0.0, -1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 3.0]], dtype=DT)
    n = 20_000
    u = torch.rand(n, *logits.shape, generator=_gen(1), dtype=DT)
    counts = gumbel_max(logits, u).sum(0)  # [N, C]
    expected = n * torch.softmax(logits, -1)
    for var in range(logits.shape[0]):
        p_value = chisquare(counts[var].numpy(), expected[var].numpy()).pvalue
        assert p_value > 1e-3, (var, counts[var], expected[var])


def test_straight_through_forward_is_the_exact_gumbel_max_sample():
    logits, u = _logits(), torch.rand(7, 3, 4, 5, generator=_gen(2), dtype=DT)
    y = gumbel_softmax(logits, u, tau=0.7, hard=True)
    assert torch.equal(y, gumbel_max(logits, u))


def test_relaxed_samples_approach_one_hot_as_temperature_goes_to_zero():
    logits, u = _logits(), torch.rand(500, 3, 4, 5, generator=_gen(3), dtype=DT)
    hard = gumbel_max(logits, u)
    taus = (1.0, 0.3, 0.1, 0.03, 0.01, 0.001)
    dist_tv = [(gumbel_softmax(logits, u, tau) - hard).abs().sum(-1).mean() / 2 for tau in taus]
    assert all(a > b for a, b in zip(dist_tv, dist_tv[1:], strict=False)), dist_tv
    assert dist_tv[-1] < 1e-3, dist_tv


def test_straight_through_gradient_is_the_relaxed_samples_gradient():
    logits = _logits().requires_grad_(True)
    u = torch.rand(2, 3, 4, 5, generator=_gen(4), dtype=DT)
    y_soft = gumbel_softmax(logits, u, tau=0.5)
    y_hard = gumbel_softmax(logits, u, tau=0.5, hard=True)
    # A non-linear loss: the straight-through gradient is the relaxed sample's Jacobian
    # applied to dL/dy evaluated at the hard sample.
    w = torch.randn(5, dtype=DT, generator=_gen(5))
    loss = ((y_hard * w).sum(-1) ** 2).sum()
    (grad_st,) = torch.autograd.grad(loss, logits)
    y_probe = y_hard.detach().requires_grad_(True)
    (dl_dy,) = torch.autograd.grad(((y_probe * w).sum(-1) ** 2).sum(), y_probe)
    (grad_relaxed,) = torch.autograd.grad(y_soft, logits, grad_outputs=dl_dy)
    torch.testing.assert_close(grad_st, grad_relaxed, rtol=1e-12, atol=1e-14)
    assert grad_st.abs().sum() > 0


# --- categorical posterior and prior ----------------------------------------------------------
def test_categorical_kl_equals_direct_sum_and_vanishes_at_uniform():
    logits = _logits()
    pi = torch.softmax(logits, -1)
    direct = (pi * torch.log(pi * logits.shape[-1])).sum(-1)
    torch.testing.assert_close(categorical_kl_uniform(logits), direct, rtol=1e-12, atol=1e-14)
    uniform = torch.full((2, 4, 5), 3.7, dtype=DT)
    assert categorical_kl_uniform(uniform).abs().max() < 1e-14
    one_hot_ish = torch.tensor([[[80.0, 0.0, 0.0]]], dtype=DT)  # deterministic q: KL = log C
    torch.testing.assert_close(
        categorical_kl_uniform(one_hot_ish), torch.tensor([[math.log(3)]], dtype=DT)
    )


def test_categorical_kl_registry_matches_monte_carlo():
    logits = _logits()
    q, p = RelaxedCategoricalPosterior(logits), UniformCategoricalPrior(4, 5, dtype=DT)
    kl = kl_divergence(q, p)
    assert kl is not None
    torch.testing.assert_close(kl.per_dim, categorical_kl_uniform(logits))
    torch.testing.assert_close(kl.total, kl.per_dim.sum(-1))
    eps = q.noise.draw(50_000, 3, dtype=DT, generator=_gen(6))
    z, log_q = q.sample_and_log_prob(eps)
    log_ratio = log_q - p.log_prob(z)  # [S, B]
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(eps.shape[0])
    assert torch.all((kl.total - mc).abs() < 5 * se), (kl.total, mc, se)


def test_log_prob_of_hard_samples_matches_torch_distributions():
    logits = _logits()
    q = RelaxedCategoricalPosterior(logits, straight_through=True)
    eps = q.noise.draw(6, 3, dtype=DT, generator=_gen(7))
    z = q.sample(eps)
    reference = OneHotCategorical(logits=logits).log_prob(z).sum(-1)  # [S, B]
    torch.testing.assert_close(q.log_prob(z), reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_categorical(z, logits), reference, rtol=1e-12, atol=1e-12)
    assert q.log_prob(z, groups=True).shape == (6, 3, 1)
    prior = UniformCategoricalPrior(4, 5, dtype=DT)
    uniform = OneHotCategorical(logits=torch.zeros(4, 5, dtype=DT)).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), uniform)


def test_posterior_training_samples_are_relaxed_or_straight_through():
    logits = _logits()
    eps = NoiseSpec("uniform", (4, 5)).draw(3, 3, dtype=DT, generator=_gen(8))
    soft = RelaxedCategoricalPosterior(logits, temperature=0.5).rsample(eps)
    hard = RelaxedCategoricalPosterior(logits, straight_through=True).rsample(eps, 0.5)
    torch.testing.assert_close(soft.sum(-1), torch.ones(3, 3, 4, dtype=DT))
    assert (soft < 1).all() and (soft > 0).all()
    assert torch.equal(hard, gumbel_max(logits, eps))
    q = RelaxedCategoricalPosterior(logits)
    torch.testing.assert_close(q.summary().view(3, 4, 5).sum(-1), torch.ones(3, 4, dtype=DT))
    assert torch.equal(q.point().argmax(-1), logits.argmax(-1))


def test_uniform_categorical_prior_samples_are_uniform_whatever_the_temperature():
    prior = UniformCategoricalPrior(2, 4)
    z = prior.sample(8000, temperature=0.1, generator=_gen(9))
    assert torch.equal(z.sum(-1), torch.ones(8000, 2))
    for counts in z.sum(0):
        assert chisquare(counts.numpy()).pvalue > 1e-3


# --- vector quantiser -------------------------------------------------------------------------
def _vq(k: int = 32, d: int = 6, seed: int = 0, **kw) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(num_codes=k, dim=d, **kw).double()
    with torch.no_grad():
        vq.codebook.copy_(torch.randn(k, d, generator=_gen(seed + 100), dtype=DT))
        if vq.ema:
            vq.ema_embed_sum.copy_(vq.codebook)
    return vq


def _z(b: int = 4, d: int = 6, h: int = 3, w: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, d, h, w, generator=_gen(seed), dtype=DT)


def test_quantizer_picks_the_true_nearest_entry():
    vq, z = _vq().eval(), _z()
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6)
    brute = torch.cdist(flat, vq.codebook).argmin(1)
    assert torch.equal(out.indices.flatten(), brute)
    assert torch.equal(out.quantized, vq.codebook[out.indices].permute(0, 3, 1, 2))
    assert torch.equal(vq.embed(out.indices), out.quantized)


def test_quantizer_aux_loss_is_eq3_summed_per_example():
    z = _z()
    for ema, factor in ((False, 1.25), (True, 0.25)):
        vq = _vq(ema=ema).eval()
        out = vq(z)
        sq = (z - out.quantized.detach()).pow(2).sum((1, 2, 3))
        torch.testing.assert_close(out.aux_loss, factor * sq, rtol=1e-12, atol=0)


def test_straight_through_gradient_of_the_quantizer():
    vq, z_e = _vq(), _z().requires_grad_(True)
    out = vq(z_e)
    z_q = out.quantized.detach()
    w = torch.randn_like(z_q)

    def recon(x):  # a non-linear stand-in for the decoder's loss
        return (w * x).sum() + x.pow(2).sum()

    # The decoder's gradient reaches z_e unchanged (eq. 3's straight-through): exactly.
    (g_ze,) = torch.autograd.grad(recon(out.quantized), z_e, retain_graph=True)
    probe = z_q.clone().requires_grad_(True)
    (g_zq,) = torch.autograd.grad(recon(probe), probe)
    assert torch.equal(g_ze, g_zq)
    # With the aux loss: + 2 beta (z_e - z_q) from the commitment term (the codebook term
    # stops the gradient to z_e); exact up to the rounding of one addition.
    (g_total,) = torch.autograd.grad(recon(out.quantized) + out.aux_loss.sum(), z_e)
    torch.testing.assert_close(
        g_total, g_zq + 2 * 0.25 * (z_e.detach() - z_q), rtol=1e-14, atol=1e-14
    )


def test_codebook_gradient_comes_from_the_codebook_loss_only():
    vq, z_e = _vq(), _z().requires_grad_(True)
    out = vq(z_e)
    (out.quantized.pow(3).sum() + out.aux_loss.sum()).backward()
    flat, idx = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 6), out.indices.flatten()
    expected = torch.zeros_like(vq.codebook).index_add_(
        0, idx, 2 * (vq.codebook.detach()[idx] - flat)
    )
    torch.testing.assert_close(vq.codebook.grad, expected, rtol=1e-12, atol=1e-12)


def test_ema_update_matches_its_closed_form():
    gamma, eps = 0.9, 1e-5
    vq = VectorQuantizer(num_codes=3, dim=2, ema=True, decay=gamma, eps=eps).double()
    e0 = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=DT)
    with torch.no_grad():
        vq.codebook.copy_(e0)
        vq.ema_embed_sum.copy_(e0)
    # 3 vectors near entry 0, 1 near entry 1, none near entry 2: [B=1, D=2, H=1, W=4].
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 2.0], [9.0, 1.0]], dtype=DT)
    out = vq.train()(vectors.t().reshape(1, 2, 1, 4))
    assert out.indices.flatten().tolist() == [0, 0, 0, 1]
    assert torch.equal(out.quantized[0, :, 0].t(), e0[[0, 0, 0, 1]])  # the old codebook
    n_new = torch.tensor([3.0, 1.0, 0.0], dtype=DT)
    sums = torch.stack([vectors[:3].sum(0), vectors[3], torch.zeros(2, dtype=DT)])
    size = gamma * 1.0 + (1 - gamma) * n_new  # the state starts at 1 per entry
    embed_sum = gamma * e0 + (1 - gamma) * sums
    total = size.sum()
    smoothed = (size + eps) / (total + 3 * eps) * total
    torch.testing.assert_close(vq.ema_cluster_size, size, rtol=1e-15, atol=0)
    torch.testing.assert_close(vq.ema_embed_sum, embed_sum, rtol=1e-15, atol=0)
    torch.testing.assert_close(vq.codebook, embed_sum / smoothed[:, None], rtol=1e-14, atol=1e-14)
    # The unused entry stays (nearly) where it was: its sum and count decay together.
    torch.testing.assert_close(vq.codebook[2], e0[2], rtol=1e-4, atol=0)


def test_dead_entries_restart_from_encoder_outputs_after_n_unused_steps():
    vq = _vq(k=4, d=2, restart_after=3)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 1.0], [-1.0, 1.0], [0.0, -1.0], [1e3, 1e3]]))
    batches = [_z(b=2, d=2, h=2, w=2, seed=s) for s in range(4)]
    for step, z in enumerate(batches[:2], start=1):
        out = vq(z)
        assert vq.unused_steps[3] == step and out.metrics["restarts"] == 0
    vq.eval()(batches[2])  # eval mode changes no state
    assert vq.unused_steps[3] == 2
    torch.manual_seed(123)
    out = vq.train()(batches[2])  # third unused step: the entry restarts
    assert vq.restarts == 1 and out.metrics["restarts"] == 1 and vq.unused_steps[3] == 0
    flat = batches[2].permute(0, 2, 3, 1).reshape(-1, 2)
    assert (flat == vq.codebook[3]).all(1).any(), "restarted from one of the batch's vectors"
    torch.manual_seed(123)  # the pick follows the global RNG: the same row again
    assert torch.equal(vq.codebook[3], flat[torch.randint(flat.shape[0], (1,))][0])
    never = _vq(k=4, d=2, restart_after=0)
    with torch.no_grad():
        never.codebook.copy_(vq.codebook.new_tensor([[1, 1], [-1, 1], [0, -1], [1e3, 1e3]]))
    for z in batches:
        never(z)
    assert never.restarts == 0 and never.codebook[3, 0] == 1e3


def test_usage_and_perplexity_metrics():
    vq = _vq(k=4, d=2).eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0], [0.0, -5.0]]))
    z = torch.tensor([[1.1, 0.0], [0.9, 0.1], [-1.0, 0.1], [-1.0, -0.2]], dtype=DT)
    out = vq(z.t().reshape(1, 2, 2, 2))
    assert out.metrics["usage"] == 0.5
    torch.testing.assert_close(out.metrics["perplexity"], torch.tensor(2.0, dtype=DT))


def test_quantizer_state_dict_round_trip_resumes_bit_exactly():
    batches = [_z(seed=s) for s in range(6)]
    for ema in (True, False):
        vq = _vq(k=16, restart_after=2, ema=ema)
        for z in batches[:3]:
            vq(z)
        buffer = io.BytesIO()
        torch.save(vq.state_dict(), buffer)
        buffer.seek(0)
        resumed = VectorQuantizer(num_codes=16, dim=6, restart_after=2, ema=ema).double()
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        rng = torch.get_rng_state()
        ours = [vq(z) for z in batches[3:]]
        torch.set_rng_state(rng)
        theirs = [resumed(z) for z in batches[3:]]
        assert vq.restarts > 0
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.aux_loss, b.aux_loss)
        for key, value in vq.state_dict().items():
            assert torch.equal(value, resumed.state_dict()[key]), key


# --- data parallel: 2 gloo processes equal 1 --------------------------------------------------
GLOBAL_BATCH, DDP_STEPS = 8, 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_quantizers(rank: int, world: int) -> dict[str, torch.Tensor]:
    """EMA and gradient-trained quantisers with restarts, DDP_STEPS steps on the global batches."""
    torch.manual_seed(0)  # every rank: the same initial codebook and RNG stream
    out = {}
    for ema in (True, False):
        vq = VectorQuantizer(num_codes=16, dim=4, ema=ema, decay=0.9, restart_after=2)
        model = vq
        if world > 1 and not ema:
            model = torch.nn.parallel.DistributedDataParallel(vq)
        opt = None if ema else torch.optim.SGD(vq.parameters(), lr=0.05)
        data = _gen(1)
        for _ in range(DDP_STEPS):
            z = 2 * torch.randn(GLOBAL_BATCH, 4, 3, 3, generator=data)
            res = model(z.chunk(world)[rank])
            if opt is not None:
                opt.zero_grad()
                # DDP averages over ranks: world * (local sum) / global batch = global mean.
                (res.aux_loss.sum() * world / GLOBAL_BATCH).backward()
                opt.step()
        out.update({f"ema={ema}.{k}": v.detach().clone() for k, v in vq.state_dict().items()})
        out[f"ema={ema}.usage"] = res.metrics["usage"]
    return out


def _worker(rank: int, port: int, queue) -> None:
    torch.set_num_threads(1)  # OpenMP's pool does not survive fork
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
        )
        try:
            # As bytes: a tensor put on a queue is shared through this process's files.
            buffer = io.BytesIO()
            torch.save(_train_quantizers(rank, 2), buffer)
            queue.put((rank, buffer.getvalue()))
        finally:
            dist.destroy_process_group()
    except Exception as e:  # reported to the test instead of hanging it
        queue.put((rank, repr(e)))
    finally:
        queue.close()
        queue.join_thread()  # the result is written before the process ends
        os._exit(0)  # skip interpreter shutdown in the forked child (gloo threads)


def test_two_processes_equal_one_process():
    ctx = mp.get_context("fork")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    for r in range(2):
        assert isinstance(results[r], bytes), results[r]
        results[r] = torch.load(io.BytesIO(results[r]), weights_only=True)
    single = _train_quantizers(0, 1)
    assert single["ema=True.restarts"] > 0 and single["ema=False.restarts"] > 0
    for key, value in single.items():
        # Both ranks hold one codebook; it is one process's up to float summation order.
        assert torch.equal(results[0][key], results[1][key]), key
        if value.is_floating_point():
            torch.testing.assert_close(results[0][key], value, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(results[0][key], value), key


# --- codes: posterior and priors --------------------------------------------------------------
def test_code_posterior_samples_and_kl_against_uniform_prior():
    vq, z_e = _vq(k=8).eval(), _z().requires_grad_(True)
    q = CodePosterior.from_quantized(z_e, vq(z_e))
    eps = q.noise.draw(3, 4, dtype=DT)
    v = q.rsample(eps)
    assert torch.equal(v, q.z_q.expand(3, *q.z_q.shape))
    (g,) = torch.autograd.grad((v * 2.0).sum(), z_e)
    assert torch.equal(g, torch.full_like(z_e, 6.0))  # identity per sample, 3 samples
    idx = q.sample(eps)
    assert torch.equal(idx[1], q.indices) and idx.dtype == torch.long
    assert torch.equal(q.log_prob(idx), torch.zeros(3, 4, dtype=DT))
    other = idx.clone()
    other[0, 1, 2, 3] = (other[0, 1, 2, 3] + 1) % 8
    assert q.log_prob(other)[0, 1] == -math.inf and q.log_prob(other)[0, 0] == 0
    prior = UniformCodePrior(3, 5, 8, dtype=DT)
    kl = kl_divergence(q, prior)
    torch.testing.assert_close(kl.total, torch.full((4,), 15 * math.log(8), dtype=DT))
    torch.testing.assert_close(kl.total, q.log_prob(idx)[0] - prior.log_prob(idx)[0])
    assert torch.equal(q.summary(), q.indices.flatten(1).double())


def test_uniform_code_prior_samples_are_uniform():
    z = UniformCodePrior(4, 4, 6).sample(2000, temperature=0.3, generator=_gen(10))
    assert chisquare(torch.bincount(z.flatten(), minlength=6).numpy()).pvalue > 1e-3
    with pytest.raises(ValueError, match="index grids"):
        UniformCodePrior(4, 4, 6).log_prob(torch.zeros(2, 4, 4))


# --- gated PixelCNN ---------------------------------------------------------------------------
def _pixelcnn(k: int = 5, h: int = 4, w: int = 5, layers: int = 5, seed: int = 0) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return GatedPixelCNN(k, h, w, channels=8, layers=layers).double().eval()


def test_pixelcnn_is_causal_and_has_no_blind_spot():
    net = _pixelcnn()
    grid = torch.randint(5, (1, 4, 5), generator=_gen(11))
    base = net.logits(grid).flatten(2)  # [1, K, H*W] in raster order
    for pos in range(20):
        changed = grid.clone().view(-1)
        changed[pos] = (changed[pos] + 1) % 5
        logits = net.logits(changed.view(1, 4, 5)).flatten(2)
        assert torch.equal(logits[..., : pos + 1], base[..., : pos + 1]), pos
        # No blind spot: the last code sees every code before it (above-right included).
        if pos < 19:
            assert not torch.equal(logits[..., 19], base[..., 19]), pos


def test_pixelcnn_log_prob_is_the_sum_of_picked_log_softmax():
    net = _pixelcnn()
    grid = torch.randint(5, (3, 4, 5), generator=_gen(12))
    log_sm = F.log_softmax(net.logits(grid), dim=1)  # [B, K, H, W]
    picked = log_sm.gather(1, grid.unsqueeze(1)).squeeze(1).sum((1, 2))
    torch.testing.assert_close(net.log_prob(grid), picked, rtol=1e-12, atol=1e-12)


def test_pixelcnn_prior_sums_to_one_over_every_grid():
    prior = PixelCNNCodePrior(_pixelcnn(k=3, h=2, w=2, layers=2))
    grids = torch.tensor(list(itertools.product(range(3), repeat=4))).view(81, 1, 2, 2)
    log_p = prior.log_prob(grids)  # [S=81, B=1]
    assert log_p.shape == (81, 1)
    torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=DT), rtol=0, atol=1e-12)


def test_pixelcnn_samples_are_reproducible_grids_of_codes():
    prior = PixelCNNCodePrior(_pixelcnn(k=3, h=2, w=3, layers=2))
    a = prior.sample(200, generator=_gen(13))
    b = prior.sample(200, generator=_gen(13))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (200, 2, 3)
    assert a.min() >= 0 and a.max() <= 2
    # The first code has no context: its frequencies follow the softmax of its logits.
    p0 = torch.softmax(prior.pixelcnn.logits(a[:1])[0, :, 0, 0], 0)
    counts = torch.bincount(a[:, 0, 0], minlength=3)
    assert chisquare(counts.numpy(), (200 * p0).detach().numpy()).pvalue > 1e-3
    cold = prior.sample(50, temperature=1e-3, generator=_gen(14))
    assert (cold == cold[0]).all(), "near zero temperature every draw is the greedy grid"


def test_kl_against_pixelcnn_prior_is_its_negative_log_likelihood_of_the_codes():
    net = _pixelcnn(k=8, h=3, w=5, layers=2)
    vq, z_e = _vq(k=8).eval(), _z()
    q = CodePosterior.from_quantized(z_e, vq(z_e))
    kl = kl_divergence(q, PixelCNNCodePrior(net))
    torch.testing.assert_close(kl.total, -net.log_prob(q.indices))
    torch.testing.assert_close(kl.per_dim, -net.log_prob_per_code(q.indices).flatten(1))
