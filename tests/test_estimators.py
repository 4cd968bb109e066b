"""Exactness of the likelihood estimators on a linear-Gaussian model.

Model: z ~ N(0, I_d), x = W z + b + sigma * eps, so log p(x) = log N(x; b, W W^T + sigma^2 I)
exactly. With W's columns orthogonal the exact posterior is a diagonal Gaussian,
    q*(z|x) = N(S W^T (x - b) / sigma^2, S),  S = (I + W^T W / sigma^2)^-1 (diagonal),
which an aevb VAE with a single linear encoder layer represents exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import elbo_terms, encode, make_model

from aevb import VAE
from aevb.data import Dataset, DatasetInfo
from aevb.distributions import log_normal_diag
from aevb.estimators import importance_weighted, naive_prior, sample_noise
from aevb.evaluate import evaluate


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Exactness is checked in float64; the default is restored for other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class LinearGaussian:
    """Ground truth plus an aevb VAE set to (a perturbation of) the exact posterior."""

    def __init__(self, d_x: int, d_z: int, sigma: float, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d_x, d_z, generator=g))
        scales = torch.linspace(0.5, 2.0, d_z)
        self.W = q * scales  # orthogonal columns
        self.b = 0.3 * torch.randn(d_x, generator=g)
        self.sigma = sigma
        self.d_x, self.d_z = d_x, d_z
        self.S = 1.0 / (1.0 + scales.pow(2) / sigma**2)  # diagonal of the exact posterior cov

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d_z, generator=g)
        return z @ self.W.T + self.b + self.sigma * torch.randn(n, self.d_x, generator=g)

    def log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.d_x)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def model(self, mu_shift: float = 0.0, var_scale: float = 1.0, mu_gain: float = 1.0) -> VAE:
        """A VAE whose encoder is the exact posterior, optionally made worse on purpose."""
        m = make_model(
            torch.float64,
            input_shape=(self.d_x,),
            latent_dim=self.d_z,
            hidden=(),
            likelihood="gaussian",
            sigma=self.sigma,
        )
        A = mu_gain * (self.S[:, None] * self.W.T) / self.sigma**2  # [d_z, d_x]
        enc, dec = m.encoder.net[0], m.decoder.net[0]
        with torch.no_grad():
            enc.weight.zero_()
            enc.weight[: self.d_z] = A
            enc.bias[: self.d_z] = -A @ self.b + mu_shift
            enc.bias[self.d_z :] = torch.log(self.S * var_scale)
            dec.weight.copy_(self.W)
            dec.bias.copy_(self.b)
        return m.eval()


def as_dataset(x: torch.Tensor) -> Dataset:
    info = DatasetInfo(
        "linear-gaussian", (x.shape[1],), (float(x.min()), float(x.max())), False, "gaussian"
    )
    return Dataset(info, {"train": x[:2], "valid": x[:2], "test": x})


def closed_form_elbo(lg: LinearGaussian, model: VAE, x: torch.Tensor) -> torch.Tensor:
    """E_q[log p(x|z)] - KL(q || p(z)) in closed form for the linear-Gaussian model: [B]."""
    from aevb.distributions import gaussian_kl_standard

    mu, logvar = encode(model, x)
    resid = x - mu @ lg.W.T - lg.b
    trace = (logvar.exp() * lg.W.pow(2).sum(0)).sum(1)
    e_log_px_z = -0.5 * lg.d_x * math.log(2 * math.pi * lg.sigma**2) - (
        resid.pow(2).sum(1) + trace
    ) / (2 * lg.sigma**2)
    return e_log_px_z - gaussian_kl_standard(mu, logvar)


@pytest.fixture(scope="module")
def lg() -> LinearGaussian:
    return LinearGaussian(d_x=5, d_z=2, sigma=0.5)


def test_exact_posterior_gives_exact_log_px_for_any_k(lg):
    model, x = lg.model(), lg.sample(64)
    truth = lg.log_px(x)
    for k in (1, 7, 100):
        est = importance_weighted(model, x, k)["log_px_iw"]
        torch.testing.assert_close(est, truth, rtol=1e-4, atol=0)
        # every importance weight equals p(x): the estimate has no variance at all
        assert torch.allclose(est, truth, rtol=1e-10, atol=1e-10)


def test_gap_is_kl_to_exact_posterior(lg):
    """log p(x) - ELBO = KL(q(z|x) || p(z|x)): exactly in closed form, and as estimated."""
    from aevb.distributions import gaussian_kl

    x = lg.sample(64)
    model = lg.model(mu_shift=0.4, var_scale=1.8)
    mu, logvar = encode(model, x)
    elbo_exact = closed_form_elbo(lg, model, x)
    exact_mu, exact_logvar = encode(lg.model(), x)
    kl_to_posterior = gaussian_kl(mu, logvar, exact_mu, exact_logvar)
    torch.testing.assert_close(lg.log_px(x) - elbo_exact, kl_to_posterior, rtol=1e-9, atol=1e-9)
    # the estimator's gap (K = 5000) agrees on average, within its Monte-Carlo error
    r = importance_weighted(model, x, 5000)
    diff = r["gap"] - kl_to_posterior
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff)) + 1e-3
    assert (kl_to_posterior > 0.05).all()


def test_poor_q_bound_below_truth_and_rises_with_k(lg):
    model, x = lg.model(mu_shift=0.5, var_scale=2.0, mu_gain=0.8), lg.sample(200)
    truth = lg.log_px(x).mean()
    means = {
        k: importance_weighted(model, x, k, seed=3)["log_px_iw"].mean() for k in (1, 10, 100, 5000)
    }
    assert means[1] < means[10] < means[100] < means[5000] <= truth + 1e-3
    assert truth - means[1] > 0.2  # the poor q really is poor
    assert truth - means[5000] < 0.05


def test_k1_is_the_single_sample_elbo(lg):
    model, x = lg.model(mu_shift=0.3, var_scale=1.5), lg.sample(16)
    seed = 11
    est = importance_weighted(model, x, 1, seed=seed)["log_px_iw"]
    # same noise, computed by hand: log p(x|z) + log p(z) - log q(z|x)
    mu, logvar = encode(model, x)
    eps = sample_noise(model.latent.noise, seed, 0, 1, len(x), x.device, mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps
    log_prior = log_normal_diag(z, torch.zeros_like(mu), torch.zeros_like(logvar))
    log_q = log_normal_diag(z, mu, logvar)
    by_hand = model.log_likelihood(x, z) + log_prior - log_q
    torch.testing.assert_close(est, by_hand[0], rtol=1e-12, atol=1e-12)
    # and it is the ELBO objective on that noise up to the MC-vs-closed-form KL term
    out = elbo_terms(model, x, eps)
    mc_kl = (log_q - log_prior)[0]
    torch.testing.assert_close(est, -out.recon_nll - mc_kl, rtol=1e-12, atol=1e-12)
    # averaged over many draws, K = 1 estimates the closed-form ELBO
    draws = torch.stack(
        [importance_weighted(model, x, 1, seed=s)["log_px_iw"] for s in range(4000)]
    )
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert ((mean - closed_form_elbo(lg, model, x)).abs() < 4.5 * se).all()


def test_naive_estimator_converges_in_1d():
    lg1 = LinearGaussian(d_x=3, d_z=1, sigma=0.5, seed=2)
    model, x = lg1.model(), lg1.sample(20)
    est = naive_prior(model, x, 200_000, chunk_size=1 << 20)
    torch.testing.assert_close(est, lg1.log_px(x), rtol=0, atol=0.02)


def test_naive_estimator_biased_in_50d_while_iw_is_exact():
    lg50 = LinearGaussian(d_x=60, d_z=50, sigma=0.3, seed=4)
    model, x = lg50.model(), lg50.sample(10)
    truth = lg50.log_px(x)
    naive = naive_prior(model, x, 20_000, chunk_size=1 << 18)
    assert (truth - naive).mean() > 20.0  # hopelessly low: the prior rarely hits the posterior
    iw = importance_weighted(model, x, 10)["log_px_iw"]
    torch.testing.assert_close(iw, truth, rtol=1e-4, atol=0)


def test_chunk_size_does_not_change_results(lg):
    model, x = lg.model(mu_shift=0.5, var_scale=2.0), lg.sample(30)
    ref = importance_weighted(model, x, 257, chunk_size=1 << 20)
    for chunk in (1, 30, 100, 4000):
        r = importance_weighted(model, x, 257, chunk_size=chunk)
        for key in ("log_px_iw", "distortion", "gap"):
            assert torch.equal(r[key], ref[key]), (chunk, key)


def test_memory_bounded_by_chunk_size(lg):
    """The decoder never sees more than max(chunk_size, batch) rows, whatever K."""
    model, x = lg.model(), lg.sample(10)
    rows = []
    model.decoder.register_forward_hook(
        lambda mod, inp, out: rows.append(inp[0].shape[:-1].numel())
    )
    importance_weighted(model, x, 5000, chunk_size=200)
    assert max(rows) <= 200 and sum(rows) == 5000 * 10


def test_whole_split_evaluated_exactly_once(lg):
    """1037 examples in batches of 100: the mean matches the truth's mean only if each counts once."""
    x = lg.sample(1037, seed=5)
    res = evaluate(lg.model(), as_dataset(x), "test", k=3, batch_size=100)
    assert res["n_examples"] == 1037
    assert res["log_px_iw"] == pytest.approx(lg.log_px(x).mean().item(), rel=1e-9)
    assert res["log_px_iw_se"] == pytest.approx(
        (lg.log_px(x).std() / math.sqrt(1037)).item(), rel=1e-6
    )
    # A density of continuous data: bits/dim would depend on the data's scale, so none.
    assert "bits_per_dim" not in res and "bits_per_dim_dequantized" not in res
    assert res["bits_per_dim_kind"] is None and "density" in res["bits_per_dim_note"]


def test_active_units_and_rate_per_dimension():
    """A latent dimension the encoder ignores (mu constant, var = 1) is inactive with zero KL."""
    lg3 = LinearGaussian(d_x=6, d_z=3, sigma=0.5, seed=6)
    model = lg3.model()
    enc = model.encoder.net[0]
    with torch.no_grad():
        enc.weight[2].zero_()
        enc.bias[2] = 0.0
        enc.bias[3 + 2] = 0.0  # logvar 0: q_2 = N(0, 1) = prior
    res = evaluate(model, as_dataset(lg3.sample(500)), "test", k=10)
    assert res["active_units"] == 2
    assert res["kl_per_dim"][2] == pytest.approx(0.0, abs=1e-12)
    assert sum(res["kl_per_dim"]) == pytest.approx(res["rate"], rel=1e-9)
    for key in ("log_px_iw", "neg_elbo", "rate", "distortion", "gap"):
        assert f"{key}_se" in res and res[f"{key}_se"] >= 0
