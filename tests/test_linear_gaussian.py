"""The ELBO against an exact likelihood: a linear-Gaussian model built from aevb's pieces.

Model: z ~ N(0, I_K), x = W z + b + sigma * eps, so p(x) = N(x; b, W W^T + sigma^2 I) and
the posterior is N(m, S) with S = (I + W^T W / sigma^2)^-1, m = S W^T (x - b) / sigma^2
(Bishop, PRML eq. 2.116-2.117). An aevb VAE with ``hidden=()`` has one Linear layer per
network, so its decoder mean is exactly W z + b and its encoder an affine map of x.

Because log p(x|z) is quadratic in z, E_q[log p(x|z)] is computed exactly by averaging over
the 2K "sigma points" eps = +-sqrt(K) e_j (mean 0, covariance I): feeding them as the
reparameterisation noise turns aevb's Monte-Carlo ELBO into the exact ELBO.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import elbo_terms, encode
from helpers import make_model as build
from torch.distributions import MultivariateNormal, kl_divergence

from aevb import VAE
from aevb.distributions import gaussian_kl, reparameterise
from aevb.latents import KLTerms
from aevb.objectives import importance_terms

DT = torch.float64
D, K, SIGMA, B = 6, 3, 0.5, 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(w: torch.Tensor, b: torch.Tensor) -> VAE:
    model = build(
        DT, input_shape=(D,), latent_dim=K, hidden=(), likelihood="gaussian", sigma=SIGMA
    ).requires_grad_(False)
    (dec,) = model.decoder.net  # hidden=() -> a single affine map z -> W z + b
    with torch.no_grad():
        dec.weight.copy_(w)
        dec.bias.copy_(b)
    return model


def orthogonal_w(seed: int = 0) -> torch.Tensor:
    """W [D, K] with orthogonal (not orthonormal) columns: W^T W is diagonal."""
    q, _ = torch.linalg.qr(torch.randn(D, K, generator=_gen(seed), dtype=DT))
    return q * torch.tensor([2.0, 0.7, 1.3], dtype=DT)


def exact_log_px(x, w, b) -> torch.Tensor:
    cov = w @ w.T + SIGMA**2 * torch.eye(D, dtype=DT)
    return MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def exact_posterior(x, w, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[B, K]`` and full covariance ``[K, K]`` of p(z|x)."""
    s = torch.linalg.inv(torch.eye(K, dtype=DT) + w.T @ w / SIGMA**2)
    m = (x - b) @ (s @ w.T / SIGMA**2).T
    return m, s


def set_encoder_to_posterior(model: VAE, w, b) -> None:
    """mu(x) = A x - A b with A = S W^T / sigma^2; logvar = log diag S (exact if S is diagonal)."""
    s = torch.linalg.inv(torch.eye(K, dtype=DT) + w.T @ w / SIGMA**2)
    a = s @ w.T / SIGMA**2
    (enc,) = model.encoder.net
    with torch.no_grad():
        enc.weight.zero_()
        enc.weight[:K] = a
        enc.bias[:K] = -a @ b
        enc.bias[K:] = torch.log(torch.diagonal(s))


def sigma_points(batch: int) -> torch.Tensor:
    """``[2K, batch, K]`` noise whose empirical mean is 0 and covariance exactly I."""
    e = math.sqrt(K) * torch.eye(K, dtype=DT)
    return torch.cat([e, -e]).unsqueeze(1).expand(2 * K, batch, K).contiguous()


def exact_elbo(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """aevb's ELBO [B] with the expectation over q done exactly (sigma-point noise)."""
    return -elbo_terms(model, x, sigma_points(len(x))).neg_elbo


@pytest.fixture
def problem():
    w = orthogonal_w()
    b = torch.randn(D, generator=_gen(1), dtype=DT)
    z = torch.randn(B, K, generator=_gen(2), dtype=DT)
    x = z @ w.T + b + SIGMA * torch.randn(B, D, generator=_gen(3), dtype=DT)
    return w, b, x


def test_model_is_the_linear_gaussian_model(problem):
    w, b, x = problem
    model = make_model(w, b)
    assert len(model.decoder.net) == 1 and len(model.encoder.net) == 1
    z = torch.randn(4, K, dtype=DT)
    torch.testing.assert_close(model.generate(z), z @ w.T + b)
    # diagonal W^T W, so the exact posterior lies in the diagonal-Gaussian family
    wtw = w.T @ w
    torch.testing.assert_close(wtw, torch.diag(torch.diagonal(wtw)))


def test_elbo_equals_log_px_for_the_exact_posterior(problem):
    w, b, x = problem
    model = make_model(w, b)
    set_encoder_to_posterior(model, w, b)
    log_px = exact_log_px(x, w, b)
    torch.testing.assert_close(exact_elbo(model, x), log_px, rtol=1e-10, atol=0)
    # The full Monte-Carlo estimator log p(x, z) - log q(z|x) has zero variance: every
    # sample z ~ q gives log p(x) exactly.
    eps = torch.randn(1000, B, K, dtype=DT, generator=_gen(9))
    log_w = importance_terms(model, x, model.posterior(x), model.prior(), eps).log_w  # [1000, B]
    assert log_w.shape == (1000, B)
    torch.testing.assert_close(log_w, log_px.expand_as(log_w), rtol=1e-10, atol=0)
    assert float(log_w.std(0).max()) < 1e-10 * float(log_px.abs().max())


def test_monte_carlo_elbo_is_unbiased_for_the_exact_posterior(problem):
    """The ELBO the trainer computes (forward with L samples) averages to log p(x)."""
    w, b, x = problem
    n = 20_000
    model = make_model(w, b)
    set_encoder_to_posterior(model, w, b)
    eps = torch.randn(n, B, K, dtype=DT, generator=_gen(0))
    out = elbo_terms(model, x, eps)
    assert out.neg_elbo.shape == (B,)
    z = model.posterior(x).rsample(eps)
    per_sample = model.log_likelihood(x, z) - out.kl  # [L, B], the ELBO's L terms
    se = per_sample.std(0) / math.sqrt(n)
    log_px = exact_log_px(x, w, b)
    torch.testing.assert_close(-out.neg_elbo, per_sample.mean(0))
    assert torch.all((-out.neg_elbo - log_px).abs() < 5 * se), (-out.neg_elbo - log_px, se)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbo_is_below_log_px_by_the_kl_to_the_posterior(problem, seed):
    """For an arbitrary encoder, log p(x) - ELBO = KL(q(z|x) || p(z|x)) > 0."""
    w, b, x = problem
    model = make_model(w, b)
    torch.manual_seed(seed)
    for p in model.encoder.parameters():
        torch.nn.init.normal_(p, std=0.5)
    log_px = exact_log_px(x, w, b)
    bound = exact_elbo(model, x)
    assert torch.all(bound < log_px)
    mu_q, logvar_q = encode(model, x)
    m, s = exact_posterior(x, w, b)
    gap = gaussian_kl(mu_q, logvar_q, m, torch.log(torch.diagonal(s)).expand_as(m))
    torch.testing.assert_close(log_px - bound, gap, rtol=1e-9, atol=1e-9)
    # The random-noise estimate the trainer uses agrees with the exact ELBO.
    n = 4000
    z = reparameterise(mu_q, logvar_q, n, generator=_gen(seed))
    kl: KLTerms = model.kl(model.posterior(x), model.prior())
    per_sample = model.log_likelihood(x, z) - kl.total
    se = per_sample.std(0) / math.sqrt(n)
    assert torch.all((per_sample.mean(0) - bound).abs() < 5 * se)
    assert torch.all(per_sample.mean(0) + 5 * se < log_px)


def test_gap_for_a_full_covariance_posterior():
    """General W: the posterior is correlated, so no diagonal q closes the gap."""
    w = torch.randn(D, K, generator=_gen(5), dtype=DT)
    b = torch.randn(D, generator=_gen(6), dtype=DT)
    x = torch.randn(B, D, generator=_gen(7), dtype=DT) + b
    model = make_model(w, b)
    set_encoder_to_posterior(model, w, b)  # right mean, diagonal of the covariance only
    m, s = exact_posterior(x, w, b)
    mu_q, logvar_q = encode(model, x)
    torch.testing.assert_close(mu_q, m)
    q = MultivariateNormal(mu_q, covariance_matrix=torch.diag_embed(logvar_q.exp()))
    post = MultivariateNormal(m, covariance_matrix=s.expand(B, K, K))
    gap = exact_log_px(x, w, b) - exact_elbo(model, x)
    torch.testing.assert_close(gap, kl_divergence(q, post), rtol=1e-9, atol=1e-9)
    assert torch.all(gap > 1e-3)
