"""The VAE: shapes, the objective's terms, and gradients through the reparameterisation."""

from __future__ import annotations

import pytest
import torch

from aevb import VAE, ConfigError, RunConfig, build_model, build_objective
from aevb.distributions import gaussian_kl_standard, log_bernoulli, reparameterise
from aevb.train import TrainStep

DT = torch.float64


def _config(**kw) -> RunConfig:
    base = dict(input_shape=(12,), latent_dim=3, hidden=(16,), likelihood="bernoulli")
    base.update(kw)
    return RunConfig().replace(**base)


def _model(**kw) -> VAE:
    torch.manual_seed(0)
    return build_model(_config(**kw))


def _forward(model, x, eps=None, beta=1.0, samples=1):
    """The ELBO objective's per-example terms for ``model`` (fresh noise unless given)."""
    objective = build_objective(_config(samples=samples))
    if eps is None:
        eps = model.latent.noise.draw(objective.num_samples, len(x), dtype=x.dtype)
    return objective(model, x, None, eps, {"beta": beta})


def _binary(b: int, *shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, *shape, generator=g) < 0.4).float()


# --- shapes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch, shape, hidden",
    [
        ("mlp", (12,), (16,)),
        ("mlp", (1, 8, 8), (32, 16)),
        ("conv", (1, 8, 8), (8, 16)),
        ("conv", (3, 7, 5), (4,)),
    ],  # odd image sizes must come back exactly
)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian-decoded"])
def test_forward_and_generation_shapes(arch, shape, hidden, likelihood):
    model = _model(input_shape=shape, arch=arch, hidden=hidden, likelihood=likelihood)
    x = _binary(5, *shape)
    out = _forward(model, x, samples=3)
    for name in ("loss", "neg_elbo", "recon_nll", "kl"):
        t = getattr(out, name)
        assert t.shape == (5,) and torch.isfinite(t).all(), name
    q = model.posterior(x)
    eps = model.latent.noise.draw(3, 5)
    assert eps.shape == (3, 5, 3)
    z = q.rsample(eps)
    assert z.shape == (3, 5, 3) and q.summary().shape == (5, 3) and q.point().shape == (5, 3)
    assert model.decode(z).shape == (3, 5, *model.likelihood.param_shape)
    assert model.likelihood.param_shape == (model.likelihood.n_params, *shape)
    assert model.sample(7).shape == (7, *shape)
    assert model.sample(7, mean=False).shape == (7, *shape)
    assert model.reconstruct(x).shape == x.shape
    assert model.embed(x).shape == (5, 3)


def test_neg_elbo_is_recon_plus_kl_and_beta_weights_only_the_loss():
    x = _binary(6, 12)
    model = _model()
    eps = torch.randn(1, 6, 3)
    o1, o4 = _forward(model, x, eps, beta=1.0), _forward(model, x, eps, beta=4.0)
    torch.testing.assert_close(o1.neg_elbo, o1.recon_nll + o1.kl)
    torch.testing.assert_close(o1.loss, o1.neg_elbo)
    torch.testing.assert_close(o4.neg_elbo, o1.neg_elbo)
    torch.testing.assert_close(o4.loss, o4.recon_nll + 4.0 * o4.kl)
    q = model.posterior(x)
    torch.testing.assert_close(o1.kl, gaussian_kl_standard(q.mu, q.logvar))
    torch.testing.assert_close(o1.kl_per_dim.sum(-1), o1.kl)


def test_forward_with_given_noise_is_the_paper_estimator():
    """neg_elbo = -(1/L) sum_l log p(x | mu + sigma * eps_l) + KL (Kingma & Welling eq. 10)."""
    model = _model()
    x = _binary(5, 12)
    eps = torch.randn(4, 5, 3)
    out = _forward(model, x, eps, samples=4)
    q = model.posterior(x)
    z = q.mu + torch.exp(0.5 * q.logvar) * eps
    log_px_z = log_bernoulli(x, model.decoder(z)[:, :, 0])
    torch.testing.assert_close(out.recon_nll, -log_px_z.mean(0))
    # deterministic given the noise
    assert torch.equal(_forward(model, x, eps, samples=4).neg_elbo, out.neg_elbo)


def test_check_model_config_rejects_unbuildable_configs():
    with pytest.raises(ConfigError, match="latent-dim"):
        _model(latent_dim=0)
    with pytest.raises(ConfigError, match="auto"):
        _model(likelihood="auto")
    with pytest.raises(ConfigError, match="--arch mlp"):
        _model(arch="conv", hidden=(8,))  # vectors are not images
    with pytest.raises(ConfigError, match="choose one of"):
        build_model(RunConfig().replace(model="nope", input_shape=(4,), likelihood="bernoulli"))


# --- gradients -------------------------------------------------------------------------
def test_gradients_reach_every_encoder_parameter():
    model = _model()
    x = _binary(16, 12)
    _forward(model, x).loss.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reached {name}"
    # Through the KL alone the encoder gets a gradient too, but the reconstruction term's
    # gradient reaches it only through z = mu + sigma * eps: check that path by itself.
    model.zero_grad()
    _forward(model, x).recon_nll.mean().backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad.abs().sum() > 0, f"reconstruction gradient did not reach {name}"


def test_elbo_gradient_matches_finite_differences():
    """d ELBO / d (mu, logvar) by autograd equals central differences (fixed noise, float64)."""
    model = _model().to(DT)
    x = _binary(4, 12).to(DT)
    eps = torch.randn(3, 4, 3, dtype=DT, generator=torch.Generator().manual_seed(1))

    def neg_elbo(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        z = reparameterise(mu, logvar, eps=eps)
        recon = -model.log_likelihood(x, z).mean(0)
        return recon + gaussian_kl_standard(mu, logvar)

    with torch.no_grad():
        q = model.posterior(x)
        mu0, logvar0 = q.mu, q.logvar
    mu = mu0.clone().requires_grad_(True)
    logvar = logvar0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(neg_elbo, (mu, logvar), eps=1e-6, atol=1e-6, rtol=1e-5)
    # ... and the model's own objective uses the same path: same gradient w.r.t. mu.
    (g_mu,) = torch.autograd.grad(neg_elbo(mu, logvar).sum(), mu)
    h = 1e-6
    fd = torch.zeros_like(mu0)
    with torch.no_grad():
        for i in range(mu0.shape[0]):
            for j in range(mu0.shape[1]):
                d = torch.zeros_like(mu0)
                d[i, j] = h
                fd[i, j] = (neg_elbo(mu0 + d, logvar0).sum() - neg_elbo(mu0 - d, logvar0).sum()) / (
                    2 * h
                )
    torch.testing.assert_close(g_mu, fd, rtol=1e-5, atol=1e-7)


def test_model_objective_gradient_wrt_encoder_bias_matches_finite_differences():
    """gradcheck of the model's own forward (fixed noise) w.r.t. the encoder's output bias,
    whose first K entries shift mu(x) and the last K shift logvar(x)."""
    model = _model().to(DT)
    step = TrainStep(model, build_objective(_config(samples=2)))
    x = _binary(3, 12).to(DT)
    eps = torch.randn(2, 3, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    params = dict(step.named_parameters())
    key = "model.encoder.net.2.bias"  # Linear(16, 2K) after Linear(12, 16) and ReLU
    assert params[key].shape == (6,)

    def neg_elbo(bias: torch.Tensor) -> torch.Tensor:
        args = (x, None, eps, {"beta": 1.0})
        return torch.func.functional_call(step, {**params, key: bias}, args).neg_elbo

    bias = params[key].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(neg_elbo, (bias,), eps=1e-6, atol=1e-6, rtol=1e-5)
