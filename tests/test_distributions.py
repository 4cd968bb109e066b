"""The density math against Monte Carlo and torch.distributions (float64 where it matters)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from aevb.distributions import (
    gaussian_kl,
    gaussian_kl_per_dim,
    gaussian_kl_standard,
    log_bernoulli,
    log_mean_exp,
    log_normal_diag,
    log_normal_sigma,
    log_standard_normal,
    reparameterise,
)
from aevb.errors import ConfigError, DataError
from aevb.likelihoods import LIKELIHOODS, build_likelihood

DT = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _diag_normal(mu: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def _q_params(b: int = 4, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    return torch.randn(b, d, generator=g, dtype=DT), 0.8 * torch.randn(b, d, generator=g, dtype=DT)


# --- KL --------------------------------------------------------------------------------
def _mc_kl(mu_q, logvar_q, log_p, n: int = 200_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo E_q[log q - log p] per example and its standard error."""
    z = reparameterise(mu_q, logvar_q, n, generator=_gen(1))  # [n, B, D]
    log_ratio = log_normal_diag(z, mu_q, logvar_q) - log_p(z)  # [n, B]
    return log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)


def test_kl_standard_matches_monte_carlo():
    mu, logvar = _q_params()
    closed = gaussian_kl_standard(mu, logvar)
    mc, se = _mc_kl(mu, logvar, log_standard_normal)
    assert closed.shape == (4,)
    assert torch.all((closed - mc).abs() < 5 * se), (closed, mc, se)


def test_kl_between_diagonal_gaussians_matches_monte_carlo():
    mu_q, logvar_q = _q_params(seed=0)
    mu_p, logvar_p = _q_params(seed=1)
    closed = gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)
    mc, se = _mc_kl(mu_q, logvar_q, lambda z: log_normal_diag(z, mu_p, logvar_p))
    assert torch.all((closed - mc).abs() < 5 * se), (closed, mc, se)


def test_kl_matches_torch_distributions():
    mu_q, logvar_q = _q_params(b=16, d=7, seed=2)
    mu_p, logvar_p = _q_params(b=16, d=7, seed=3)
    zeros = torch.zeros_like(mu_q)
    ref_std = kl_divergence(_diag_normal(mu_q, logvar_q), _diag_normal(zeros, zeros))
    ref = kl_divergence(_diag_normal(mu_q, logvar_q), _diag_normal(mu_p, logvar_p))
    torch.testing.assert_close(
        gaussian_kl_standard(mu_q, logvar_q), ref_std, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        gaussian_kl(mu_q, logvar_q, zeros, zeros), ref_std, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), ref, rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(gaussian_kl_per_dim(mu_q, logvar_q).sum(-1), ref_std)


def test_kl_is_zero_only_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 5, dtype=DT)
    assert torch.equal(gaussian_kl_standard(zeros, zeros), torch.zeros(3, dtype=DT))
    mu, logvar = _q_params()
    assert torch.all(gaussian_kl_standard(mu, logvar) > 0)
    assert torch.all(gaussian_kl(mu, logvar, mu, logvar).abs() < 1e-12)


# --- sampling --------------------------------------------------------------------------
def test_reparameterise_shapes_and_moments():
    mu = torch.tensor([[0.5, -2.0, 3.0], [1.0, 0.0, -1.0]], dtype=DT)
    logvar = torch.tensor([[0.0, -2.0, 1.5], [-4.0, 0.7, 0.0]], dtype=DT)
    n = 100_000
    z = reparameterise(mu, logvar, n, generator=_gen(0))
    assert z.shape == (n, 2, 3) and z.dtype == DT
    std = torch.exp(0.5 * logvar)
    assert torch.all((z.mean(0) - mu).abs() < 5 * std / math.sqrt(n))
    # The sample variance of a Gaussian has standard error ~ var * sqrt(2 / n).
    assert torch.all((z.var(0) - std**2).abs() < 5 * std**2 * math.sqrt(2 / n))
    assert reparameterise(mu, logvar).shape == (1, 2, 3)


def test_reparameterise_uses_given_noise_and_generator():
    mu, logvar = _q_params()
    eps = torch.randn(5, *mu.shape, generator=_gen(3), dtype=DT)
    torch.testing.assert_close(
        reparameterise(mu, logvar, eps=eps), mu + torch.exp(0.5 * logvar) * eps
    )
    a = reparameterise(mu, logvar, 3, generator=_gen(7))
    b = reparameterise(mu, logvar, 3, generator=_gen(7))
    assert torch.equal(a, b)


def test_log_mean_exp_is_stable_and_exact():
    w = torch.randn(50, 4, dtype=DT, generator=_gen(0))
    torch.testing.assert_close(log_mean_exp(w), torch.log(torch.exp(w).mean(0)))
    big = w + 1000.0  # exp overflows; the stable form does not
    torch.testing.assert_close(log_mean_exp(big), torch.log(torch.exp(w).mean(0)) + 1000.0)


# --- densities -------------------------------------------------------------------------
def test_log_normal_diag_and_standard_normal_match_torch():
    mu, logvar = _q_params(b=6, d=5)
    x = torch.randn(3, 6, 5, dtype=DT, generator=_gen(4))
    torch.testing.assert_close(log_normal_diag(x, mu, logvar), _diag_normal(mu, logvar).log_prob(x))
    zeros = torch.zeros(5, dtype=DT)
    ref = Independent(Normal(zeros, torch.ones(5, dtype=DT)), 1).log_prob(x)
    torch.testing.assert_close(log_standard_normal(x), ref)


def test_log_bernoulli_matches_torch_for_any_logit():
    g = _gen(5)
    logits = 30 * torch.randn(8, 2, 3, dtype=DT, generator=g)  # saturating logits included
    x = (torch.rand(8, 2, 3, generator=g, dtype=DT) < 0.5).to(DT)
    ref = Independent(Bernoulli(logits=logits), 2).log_prob(x)
    got = log_bernoulli(x, logits, event_dims=2)
    assert got.shape == (8,) and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref)


def test_log_normal_sigma_matches_torch():
    g = _gen(6)
    x, mu = torch.randn(2, 5, 4, generator=g, dtype=DT)
    sigma = torch.rand(4, generator=g, dtype=DT) + 0.1
    ref = Independent(Normal(mu, sigma.expand_as(mu)), 1).log_prob(x)
    torch.testing.assert_close(log_normal_sigma(x, mu, sigma), ref)
    ref_fixed = Independent(Normal(mu, torch.full_like(mu, 0.3)), 1).log_prob(x)
    torch.testing.assert_close(log_normal_sigma(x, mu, 0.3), ref_fixed)


# --- the likelihood registry -----------------------------------------------------------
EVENT = (1, 3, 4)  # an image-shaped event: log_prob must sum over all three dimensions
L, B = 2, 5


def _params(n_params: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(L, B, n_params, *EVENT, generator=_gen(seed), dtype=DT)


def _data(seed: int = 1) -> torch.Tensor:
    return torch.rand(B, *EVENT, generator=_gen(seed), dtype=DT)


def _softplus64(t: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(t))


def _normal_ref(x, mu, sigma) -> torch.Tensor:
    return Independent(Normal(mu, sigma.expand_as(mu)), len(EVENT)).log_prob(x.expand_as(mu))


def test_registry_holds_the_documented_likelihoods():
    assert {
        "bernoulli",
        "gaussian",
        "gaussian-shared",
        "gaussian-pixel",
        "gaussian-decoded",
    } <= set(LIKELIHOODS)
    with pytest.raises(ConfigError, match="choose one of"):
        build_likelihood("poisson", EVENT, 0.1, 1e-3)


def test_bernoulli_likelihood_matches_torch():
    lik = build_likelihood("bernoulli", EVENT, 0.1, 1e-3)
    params = _params(1)
    x = (_data() < 0.5).to(DT)
    ref = Independent(Bernoulli(logits=params[:, :, 0]), len(EVENT)).log_prob(x.expand(L, *x.shape))
    got = lik.log_prob(x, params)
    assert got.shape == (L, B)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(lik.mean(params), torch.sigmoid(params[:, :, 0]))
    s = lik.sample(params, generator=_gen(0))
    assert s.shape == (L, B, *EVENT) and set(s.unique().tolist()) <= {0.0, 1.0}


def test_gaussian_fixed_sigma_matches_torch():
    lik = build_likelihood("gaussian", EVENT, 0.25, 1e-3)
    params, x = _params(1), _data()
    ref = _normal_ref(x, params[:, :, 0], torch.tensor(0.25, dtype=DT))
    torch.testing.assert_close(lik.log_prob(x, params), ref)
    assert list(lik.parameters()) == []  # nothing learned


@pytest.mark.parametrize("name", ["gaussian-shared", "gaussian-pixel"])
def test_gaussian_learned_sigma_matches_torch(name):
    lik = build_likelihood(name, EVENT, 0.2, 1e-3).to(DT)
    params, x = _params(1), _data()
    # Initialised at --sigma exactly.
    torch.testing.assert_close(
        lik.sigma_min + F.softplus(lik.raw_sigma), torch.full_like(lik.raw_sigma, 0.2)
    )
    with torch.no_grad():
        lik.raw_sigma.copy_(torch.randn(lik.raw_sigma.shape, generator=_gen(9), dtype=DT))
    expected_shape = () if name == "gaussian-shared" else EVENT
    assert lik.raw_sigma.shape == expected_shape
    sigma = 1e-3 + _softplus64(lik.raw_sigma.detach())
    ref = _normal_ref(x, params[:, :, 0], sigma)
    torch.testing.assert_close(lik.log_prob(x, params), ref)


def test_gaussian_decoded_sigma_matches_torch():
    lik = build_likelihood("gaussian-decoded", EVENT, 0.2, 1e-3)
    assert lik.n_params == 2
    params, x = _params(2), _data()
    # A zero network output for the scale starts at sigma = --sigma.
    zero_raw = params.clone()
    zero_raw[:, :, 1] = 0
    torch.testing.assert_close(
        lik._sigma(zero_raw), torch.full_like(params[:, :, 1], 0.2), rtol=1e-6, atol=1e-9
    )
    sigma = 1e-3 + _softplus64(params[:, :, 1] + lik.offset)
    ref = _normal_ref(x, params[:, :, 0], sigma)
    torch.testing.assert_close(lik.log_prob(x, params), ref)


@pytest.mark.parametrize("raw", [-1e30, -1e4, -50.0, 50.0, 1e4, 1e30])
@pytest.mark.parametrize("name", ["gaussian-shared", "gaussian-pixel", "gaussian-decoded"])
def test_learned_sigma_never_gives_nan_or_inf(name, raw):
    """sigma = sigma_min + softplus(raw) stays in [sigma_min, inf): log p and grads stay finite."""
    lik = build_likelihood(name, EVENT, 0.1, 1e-3)  # float32, as in training
    params = torch.randn(L, B, lik.n_params, *EVENT, generator=_gen(2))
    x = torch.rand(B, *EVENT, generator=_gen(3))
    if name == "gaussian-decoded":
        params[:, :, 1] = raw
    else:
        with torch.no_grad():
            lik.raw_sigma.fill_(raw)
    params.requires_grad_(True)
    log_p = lik.log_prob(x, params)
    assert torch.isfinite(log_p).all(), log_p
    log_p.sum().backward()
    assert torch.isfinite(params.grad).all()
    for p in lik.parameters():
        assert torch.isfinite(p.grad).all()
    sigma = lik._sigma(params.detach())
    assert torch.all(torch.as_tensor(sigma) >= 1e-3)


def test_learned_sigma_rejects_bad_settings():
    with pytest.raises(ConfigError, match="sigma"):
        build_likelihood("gaussian-shared", EVENT, 1e-4, 1e-3)
    with pytest.raises(ConfigError, match="positive"):
        build_likelihood("gaussian", EVENT, 0.0, 1e-3)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_every_likelihood_rejects_non_finite_data(name):
    lik = build_likelihood(name, EVENT, 0.1, 1e-3)
    x = torch.randint(0, 256, (B, *EVENT)) / 255  # 8-bit values: data every likelihood accepts
    for bad in (float("nan"), float("inf")):
        x_bad = x.clone()
        x_bad[0, 0, 0, 0] = bad
        with pytest.raises(DataError, match="NaN or inf"):
            lik.check_data(x_bad)
    lik.check_data(x)


def test_bernoulli_rejects_data_outside_unit_interval():
    lik = build_likelihood("bernoulli", EVENT, 0.1, 1e-3)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        lik.check_data(torch.full((2, *EVENT), 2.0))
    with pytest.raises(DataError, match="gaussian"):
        lik.check_data(torch.full((2, *EVENT), -0.5))


# --- the ELBO terms --------------------------------------------------------------------
def test_elbo_averages_samples_once_and_beta_weights_only_the_loss():
    """recon = -mean_l log p(x|z_l), neg-ELBO = recon + KL, loss = recon + beta KL."""
    from aevb.latents import KLTerms
    from aevb.objectives import ELBO

    log_px = torch.tensor([[-1.0, -4.0], [-3.0, -2.0]], dtype=DT)  # [L=2, B=2]
    kl = torch.tensor([0.5, 2.0], dtype=DT)

    class Fixed:  # a stand-in model exposing only what the objective uses
        def context(self, x, y=None):
            return y

        def posterior(self, x, y=None):
            q = type("Q", (), {})()
            q.rsample = lambda eps, temperature=None: eps
            q.aux_loss, q.metrics = None, {}
            return q

        def prior(self, y=None):
            return None

        def log_likelihood(self, x, z, y=None):
            return log_px

        def kl(self, q, p):
            return KLTerms(kl[:, None])

    out = ELBO(samples=2)(Fixed(), torch.zeros(2), None, torch.zeros(2, 2, 1), {"beta": 4.0})
    torch.testing.assert_close(out.recon_nll, torch.tensor([2.0, 3.0], dtype=DT))
    torch.testing.assert_close(out.neg_elbo, torch.tensor([2.5, 5.0], dtype=DT))
    torch.testing.assert_close(out.loss, torch.tensor([4.0, 11.0], dtype=DT))


def test_gaussian_posterior_and_prior_densities_are_torch_distributions():
    """The Gaussian pair's densities in their fast forms (log q(mu|x) once per posterior,
    then -|eps|^2 / 2 a sample; sigma once) against
    torch.distributions, for [S, B, D] samples."""
    from aevb.latents import DiagonalGaussian, StandardNormal

    g = _gen(3)
    mu, logvar = torch.randn(5, 4, generator=g, dtype=DT), torch.randn(5, 4, generator=g, dtype=DT)
    eps = torch.randn(7, 5, 4, generator=g, dtype=DT)
    q = DiagonalGaussian(mu, logvar)
    normal_q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    z, log_q = q.sample_and_log_prob(eps)
    assert torch.equal(z, mu + (0.5 * logvar).exp() * eps)  # a multiply and an add, exact
    torch.testing.assert_close(log_q, normal_q.log_prob(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_prob(z), log_q, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(q.log_prob_at_mean, normal_q.log_prob(mu), rtol=1e-12, atol=1e-12)
    z_g, log_q_g = q.sample_and_log_prob(eps, groups=True)
    assert torch.equal(z_g, z) and torch.equal(log_q_g, log_q.unsqueeze(-1))
    assert q.std is q.std  # sigma once per posterior
    p = StandardNormal(4, dtype=DT)
    standard = Independent(Normal(torch.zeros(4, dtype=DT), torch.ones(4, dtype=DT)), 1)
    torch.testing.assert_close(p.log_prob(z), standard.log_prob(z), rtol=1e-12, atol=1e-12)
    assert torch.equal(p.log_prob(z, groups=True), p.log_prob(z).unsqueeze(-1))
