"""Objectives, schedules, free bits, the VampPrior and the two-layer model, as properties.

IWAE with k = 1 is the ELBO and its bound rises with k; schedules are pure functions that
hit their endpoints; free bits leave the gradient of units above the threshold alone; the
VampPrior's batched log-density equals a direct mixture; for a hierarchical model small
enough to integrate on a grid, ELBO <= IW estimate <= log p(x).
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_model

from aevb.latents import KLTerms
from aevb.objectives import ELBO, IWAE, free_bits, importance_terms
from aevb.schedules import burda_lr, cosine_lr, cyclical, exponential_anneal, linear_warmup

DT = torch.float64


def _binary(b: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, d, generator=g, dtype=DT) < 0.4).to(DT)


def _vae(**kw):
    torch.manual_seed(0)
    base = dict(input_shape=(10,), latent_dim=3, hidden=(16,), likelihood="bernoulli")
    return make_model(DT, **{**base, **kw})


# --- IWAE ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_kw", [{}, {"prior": "vamp", "pseudo_inputs": 4}])
def test_iwae_with_one_sample_is_the_elbo(model_kw):
    model, x = _vae(**model_kw), _binary(6, 10)
    eps = torch.randn(1, 6, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    iw = IWAE(k=1)(model, x, None, eps, {"beta": 1.0})
    # The ELBO on the same sample, with the Monte-Carlo rate log q(z|x) - log p(z):
    q, p = model.posterior(x), model.prior()
    z = q.rsample(eps)
    mc_elbo = model.log_likelihood(x, z) + p.log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(iw.loss, -mc_elbo[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(iw.terms["neg_iw_bound"], -mc_elbo[0], rtol=1e-12, atol=1e-12)
    # and averaged over noise it is the ELBO objective (closed-form KL where there is one)
    draws = torch.randn(20_000, 6, 3, dtype=DT, generator=torch.Generator().manual_seed(2))
    many = ELBO(samples=len(draws))(model, x, None, draws, {"beta": 1.0})
    per = torch.stack([IWAE(k=1)(model, x, None, e[None], {}).loss for e in draws[:4000]])
    se = per.std(0) / math.sqrt(len(per))
    assert ((per.mean(0) - many.neg_elbo).abs() < 5 * se + 1e-9).all()


def test_iwae_bound_does_not_decrease_with_k():
    model, x = _vae(), _binary(8, 10)
    g = torch.Generator().manual_seed(3)
    means = {}
    for k in (1, 5, 50):
        bounds = torch.stack(
            [
                -IWAE(k)(model, x, None, torch.randn(k, 8, 3, dtype=DT, generator=g), {}).loss
                for _ in range(400)
            ]
        )
        means[k] = bounds.mean(0)
    assert (means[5] >= means[1] - 0.02).all() and (means[50] >= means[5] - 0.02).all()
    assert (means[50] - means[1]).mean() > 0.05  # a real improvement, not a tie


def test_iwae_refuses_a_kl_weight():
    from aevb import ConfigError, RunConfig
    from aevb.objectives import build_objective

    with pytest.raises(ConfigError, match="beta"):
        build_objective(RunConfig().replace(objective="iwae", beta=2.0))
    with pytest.raises(ConfigError, match="--k applies only with --objective iwae"):
        RunConfig().replace(k=5)


# --- schedules ----------------------------------------------------------------------------
def test_schedules_hit_their_endpoints():
    assert linear_warmup(0, 0.0, 1.0, 100) == 0.0
    assert linear_warmup(50, 0.0, 1.0, 100) == 0.5
    assert linear_warmup(100, 0.0, 1.0, 100) == linear_warmup(10**6, 0.0, 1.0, 100) == 1.0
    for cycle in range(3):
        assert cyclical(cycle * 100, 0.1, 1.0, 100, 0.5) == 0.1
        assert cyclical(cycle * 100 + 25, 0.1, 1.0, 100, 0.5) == pytest.approx(0.55)
        assert cyclical(cycle * 100 + 50, 0.1, 1.0, 100, 0.5) == 1.0
        assert cyclical(cycle * 100 + 99, 0.1, 1.0, 100, 0.5) == 1.0
    assert exponential_anneal(0, 1.0, 0.5, 1e-4, 500) == 1.0
    assert exponential_anneal(499, 1.0, 0.5, 1e-4, 500) == 1.0  # held between updates
    assert exponential_anneal(10**6, 1.0, 0.5, 1e-4, 500) == 0.5
    assert cosine_lr(0, 1e-3, 1000, 10, 1e-5) == pytest.approx(1e-4)  # warm-up from 0
    assert cosine_lr(10, 1e-3, 1000, 10, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(999, 1e-3, 1000, 10, 1e-5) == pytest.approx(1e-5)
    spe = 7
    assert burda_lr(0, 1e-3, spe) == 1e-3
    assert burda_lr(spe - 1, 1e-3, spe) == 1e-3  # epoch 0 is stage 0 (3^0 epochs)
    assert burda_lr(spe, 1e-3, spe) == pytest.approx(1e-3 * 10 ** (-1 / 7))  # epochs 1-3
    assert burda_lr(4 * spe, 1e-3, spe) == pytest.approx(1e-3 * 10 ** (-2 / 7))  # from epoch 4
    assert burda_lr(3279 * spe, 1e-3, spe) == pytest.approx(1e-4)  # the last of 3,280 epochs
    assert burda_lr(10**6 * spe, 1e-3, spe) == pytest.approx(1e-4)


def test_the_burda_preset_sets_their_settings_unless_given():
    from aevb import RunConfig

    c = RunConfig().replace(schedule="burda")
    assert (c.train.batch_size, c.train.adam_eps, c.train.epochs) == (20, 1e-4, 3280)
    c = RunConfig().replace(schedule="burda", batch_size=100)
    assert c.train.batch_size == 100 and c.train.adam_eps == 1e-4


def test_the_beta_in_force_and_the_kl_per_dim_are_logged(tmp_path):
    from helpers import run_cli

    from aevb import checkpoint as ckpt

    run = tmp_path / "run"
    args = ["--hidden", "16", "--batch-size", "64", "--epochs", "3", "--figures", "false"]
    args += ["--beta-schedule", "linear", "--beta-warmup-steps", "44", "--no-progress"]
    assert run_cli("train", *args, "--out", run).code == 0
    records = ckpt.read_metrics(run)
    assert [r["beta"] for r in records] == pytest.approx([21 / 44, 43 / 44, 1.0])
    assert len(records[-1]["valid_kl_per_dim"]) == 2  # per dimension, from validation


# --- free bits ------------------------------------------------------------------------------
def test_free_bits_leave_the_gradient_of_units_above_the_threshold_unchanged():
    torch.manual_seed(0)
    per_dim = torch.rand(16, 4, dtype=DT) * torch.tensor([0.1, 2.0, 0.05, 3.0], dtype=DT)
    per_dim.requires_grad_(True)
    kl = KLTerms(per_dim.sum(-1, keepdim=True), per_dim)
    penalty = free_bits(kl, 0.5, "dim")
    # the batch mean is sum_j max(0.5, mean KL_j)
    expected = torch.clamp(per_dim.detach().mean(0), min=0.5).sum()
    torch.testing.assert_close(penalty.mean(), expected)
    (grad,) = torch.autograd.grad(penalty.mean(), per_dim)
    (plain,) = torch.autograd.grad(per_dim.sum(-1).mean(), per_dim)
    above = per_dim.detach().mean(0) > 0.5
    assert torch.equal(grad[:, above], plain[:, above])
    assert (grad[:, ~above] == 0).all()
    # per group: one unit, the whole KL
    penalty = free_bits(kl, 100.0, "group")
    assert (penalty == 100.0).all()


# --- VampPrior ---------------------------------------------------------------------------
def test_vamp_prior_log_density_equals_the_direct_mixture():
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    model = _vae(prior="vamp", pseudo_inputs=7)
    with torch.no_grad():
        model.pseudo.u.copy_(torch.rand_like(model.pseudo.u))
    p = model.prior()
    q_u = model.posterior(model.pseudo.u)
    direct = MixtureSameFamily(
        Categorical(logits=torch.zeros(7, dtype=DT)),
        Independent(Normal(q_u.mu, torch.exp(0.5 * q_u.logvar)), 1),
    )
    z = torch.randn(5, 9, 3, dtype=DT) * 2
    torch.testing.assert_close(p.log_prob(z), direct.log_prob(z), rtol=1e-10, atol=1e-10)
    # far from every component, the expanded form keeps its precision
    torch.testing.assert_close(p.log_prob(z + 30), direct.log_prob(z + 30), rtol=1e-10, atol=1e-8)
    assert p.sample(11).shape == (11, 3)


def test_vamp_pseudo_inputs_start_from_training_data(tmp_path):
    from helpers import run_cli

    import aevb
    from aevb.data import DataConfig, load_dataset

    run = tmp_path / "run"
    args = ["--prior", "vamp", "--pseudo-inputs", "5", "--hidden", "16", "--steps", "1"]
    assert run_cli("train", *args, "--lr", "1e-9", "--figures", "false", "--out", run).code == 0
    u = aevb.load(run).pseudo.u
    first = load_dataset(DataConfig()).head("train", 5)
    torch.testing.assert_close(u, first, atol=1e-6, rtol=0)


# --- the two-layer model against exact integration ---------------------------------------
def test_hierarchical_elbo_below_iw_below_exact_log_px():
    """A 1-D z1 and a 1-D z2: log p(x) by quadrature on a grid bounds the estimators."""
    torch.manual_seed(5)
    model = make_model(
        DT,
        model="hvae",
        input_shape=(6,),
        latent_dims=(1, 1),
        hidden=(8,),
        hidden_top=(8,),
        activation="tanh",
        likelihood="bernoulli",
    ).eval()
    x = _binary(4, 6, seed=3)
    # exact: log sum over a 601 x 601 grid of p(x|z1) p(z1|z2) p(z2) dz1 dz2
    grid = torch.linspace(-9, 9, 601, dtype=DT)
    z1, z2 = torch.meshgrid(grid, grid, indexing="ij")
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], -1)  # [G, 2] as [z1, z2]
    with torch.no_grad():
        log_joint = (
            model.log_likelihood(x, z[:, None, :].expand(-1, 4, -1))
            + model.prior().log_prob(z)[:, None]
        )
    cell = (grid[1] - grid[0]) ** 2
    exact = torch.logsumexp(log_joint, 0) + torch.log(cell)
    q, p = model.posterior(x), model.prior()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        elbo = -ELBO(samples=20_000)(
            model, x, None, torch.randn(20_000, 4, 2, dtype=DT, generator=g), {}
        ).neg_elbo
        t = importance_terms(model, x, q, p, torch.randn(5000, 4, 2, dtype=DT, generator=g))
        iw = torch.logsumexp(t.log_w, 0) - math.log(5000)
    assert (elbo < iw).all() and (iw < exact + 0.01).all()
    assert (exact - iw).abs().max() < 0.05  # with K = 5000 the IW estimate is nearly exact
    assert (exact - elbo).min() > 0.01  # and the ELBO is not


def test_hierarchical_posterior_samples_and_densities_agree():
    model = make_model(
        DT,
        model="hvae",
        input_shape=(6,),
        latent_dims=(3, 2),
        hidden=(8,),
        hidden_top=(8,),
        likelihood="bernoulli",
    )
    x = _binary(5, 6)
    q = model.posterior(x)
    eps = torch.randn(7, 5, 5, dtype=DT)
    z, log_q = q.sample_and_log_prob(eps, groups=True)
    torch.testing.assert_close(log_q, q.log_prob(z, groups=True))
    assert log_q.shape == (7, 5, 2) and model.latent.group_slices() == {
        "z1": slice(0, 3),
        "z2": slice(3, 5),
    }


@pytest.mark.parametrize("objective, samples", [(ELBO(samples=1), 1), (IWAE(k=5), 5)])
def test_the_training_step_traces_as_one_graph(objective, samples):
    """``--compile true`` compiles the whole step: nothing in it (the posterior's cached
    sigma included) may split the graph, or the compiled step runs slower than eager."""
    import torch._dynamo as dynamo

    from aevb import RunConfig, build_model
    from aevb.train import TrainStep

    torch.manual_seed(0)
    model = build_model(
        RunConfig().replace(
            input_shape=(10,), latent_dim=3, hidden=(16,), likelihood="bernoulli", activation="tanh"
        )
    )
    x = (torch.rand(8, 10) < 0.4).float()
    dynamo.reset()
    explained = dynamo.explain(TrainStep(model, objective))(
        x, None, torch.randn(samples, 8, 3), {"beta": 1.0}
    )
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
