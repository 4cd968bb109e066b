"""Posterior diagnostics: ELBO surgery's estimates against cases whose answer is known, the
collapse check, and traversals that move one latent unit at a time.

Known answers: an encoder that ignores x and outputs N(0, I) has an aggregate posterior
equal to the prior (KL 0, MI 0 at every draw); the exact posterior of a linear-Gaussian
model, over data drawn from the model, aggregates to the prior, and a mis-scaled one to a
Gaussian whose KL to N(0, I) is closed form; N one-hot posteriors that cover the N
classes of a uniform prior aggregate to the prior exactly with MI = log N; a code
posterior's aggregate is the empirical distribution of the code grids.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import assert_one_line_error, run_cli
from test_linear_gaussian import DT, SIGMA, D, K, make_model, orthogonal_w, set_encoder_to_posterior
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import aevb
from aevb import checkpoint as ckpt
from aevb.diagnostics import (
    aggregate_kl,
    aggregate_posterior_sample,
    class_usage,
    collapse_check,
    prior_sample,
    traversal,
)
from aevb.discrete import (
    CodePosterior,
    RelaxedCategoricalPosterior,
    UniformCategoricalPrior,
    UniformCodePrior,
    categorical_space,
    code_space,
)
from aevb.figures import plot_posterior_vs_prior, plot_traversal
from aevb.latent import traversal_latents
from aevb.latents import gaussian_space
from aevb.likelihoods import build_likelihood
from aevb.models.base import LatentVariableModel


class Examples:
    """The part of the Dataset contract the diagnostics use: one split, in order."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def eval_batches(self, split: str, batch_size: int):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i : i + batch_size], None


def linear_gaussian(scale: float = 1.0, n: int = 1000, seed: int = 10):
    """The linear-Gaussian model with its exact posterior (means times ``scale``), ``n``
    examples drawn from the model, and the closed-form KL(q(z) || N(0, I)) of its
    population aggregate posterior N(0, scale^2 A C A^T + S)."""
    w = orthogonal_w()
    b = torch.randn(D, dtype=DT, generator=torch.Generator().manual_seed(1))
    model = make_model(w, b)
    set_encoder_to_posterior(model, w, b)
    (enc,) = model.encoder.net
    with torch.no_grad():
        enc.weight[:K] *= scale
        enc.bias[:K] *= scale
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, K, dtype=DT, generator=g)
    x = z @ w.T + b + SIGMA * torch.randn(n, D, dtype=DT, generator=g)
    s = torch.linalg.inv(torch.eye(K, dtype=DT) + w.T @ w / SIGMA**2)
    a = scale * s @ w.T / SIGMA**2
    cov = a @ (w @ w.T + SIGMA**2 * torch.eye(D, dtype=DT)) @ a.T + torch.diag(s.diagonal())
    kl_population = 0.5 * (cov.trace() - K - torch.logdet(cov))
    mi_population = 0.5 * torch.logdet(torch.eye(K, dtype=DT) + w.T @ w / SIGMA**2)
    return model, Examples(x), float(kl_population), float(mi_population)


# --- the aggregate posterior against the prior --------------------------------------------
def test_an_encoder_that_ignores_x_and_outputs_the_prior_has_zero_kl_and_zero_mi():
    model, data, _, _ = linear_gaussian()
    (enc,) = model.encoder.net
    with torch.no_grad():
        enc.weight.zero_()
        enc.bias.zero_()  # mu = 0, logvar = 0: q(z|x) = N(0, I) = p(z) for every x
    s = aggregate_posterior_sample(model, data, samples=500, seed=3)
    d = aggregate_kl(s)
    # Every draw: log q(z) = logsumexp_n log N(z; 0, I) - log N = log p(z) exactly.
    torch.testing.assert_close(s.log_qz, s.log_pz, atol=1e-9, rtol=0)
    torch.testing.assert_close(s.log_qzx, s.log_qz, atol=1e-9, rtol=0)
    assert abs(d["aggregate_kl"]) < 1e-9 and abs(d["mutual_information"]) < 1e-9


@pytest.mark.parametrize("scale", [1.0, 2.0], ids=["exact-posterior", "too-wide"])
def test_the_two_estimates_bracket_the_closed_form_population_kl(scale):
    model, data, kl_pop, mi_pop = linear_gaussian(scale)
    d = aggregate_kl(aggregate_posterior_sample(model, data, samples=1000, seed=0))
    # With all N: biased up for the population (E[I] <= I_pop); leaving each draw's own
    # posterior out: biased down. The population value lies between (up to noise).
    assert d["aggregate_kl_loo"] - 3 * d["aggregate_kl_loo_se"] <= kl_pop
    assert kl_pop <= d["aggregate_kl"] + 3 * d["aggregate_kl_se"]
    width = d["aggregate_kl"] - d["aggregate_kl_loo"]
    assert 0 < width < (0.2 if scale == 1 else 0.75)  # N = 1000: a narrow bracket
    if scale == 1.0:  # the aggregate posterior is the prior
        assert kl_pop == pytest.approx(0, abs=1e-12) and 0 < d["aggregate_kl"] < 0.1
        assert d["mutual_information"] <= mi_pop + 3 * d["mutual_information_se"]
        assert mi_pop <= d["mutual_information_loo"] + 3 * d["mutual_information_loo_se"]
    else:
        assert d["aggregate_kl_loo"] > 10 * d["aggregate_kl_loo_se"]  # clearly positive
    assert 0 <= d["mutual_information"] <= d["mi_bound"] == pytest.approx(math.log(1000))
    assert d["rate_mc"] == pytest.approx(d["aggregate_kl"] + d["mutual_information"])


def test_kl_is_zero_in_expectation_when_the_aggregate_is_the_prior():
    """Over fresh data sets from the model, the exact posterior's two estimates average to
    either side of zero, the population value, and close to it; and the bracket holds for
    the too-wide encoder, whose population KL is 1.85 nats."""
    means = {}
    for scale in (1.0, 2.0):
        runs = []
        for seed in range(20, 26):
            model, data, kl_pop, _ = linear_gaussian(scale, 400, seed)
            d = aggregate_kl(aggregate_posterior_sample(model, data, 400))
            runs.append((d["aggregate_kl_loo"], d["aggregate_kl"]))
        means[scale] = [sum(r[i] for r in runs) / len(runs) for i in (0, 1)], kl_pop
    (loo, incl), kl_pop = means[1.0]
    assert abs(kl_pop) < 1e-12 and -0.2 < loo < 0 < incl < 0.2
    (loo, incl), kl_pop = means[2.0]
    assert 1.0 < loo < kl_pop < incl, means


def test_log_q_z_is_the_mixture_density_whatever_the_batching():
    torch.manual_seed(0)
    model = aevb.build_model(
        aevb.RunConfig().replace(input_shape=(6,), latent_dim=3, hidden=(8,), likelihood="gaussian")
    ).double()
    x = torch.randn(37, 6, dtype=DT)
    a = aggregate_posterior_sample(model, Examples(x), samples=20, seed=5, batch_size=37)
    b = aggregate_posterior_sample(
        model, Examples(x), samples=20, seed=5, batch_size=4, chunk_size=30
    )
    assert torch.equal(a.z, b.z) and torch.equal(a.index, b.index) and len(a.z) == 20
    torch.testing.assert_close(a.log_qz, b.log_qz, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        q = model.posterior(x)
        mixture = MixtureSameFamily(
            Categorical(logits=torch.zeros(37, dtype=DT)), Independent(Normal(q.mu, q.std), 1)
        )
        torch.testing.assert_close(a.log_qz, mixture.log_prob(a.z), rtol=1e-10, atol=1e-10)
        own = Normal(q.mu[a.index], q.std[a.index]).log_prob(a.z).sum(-1)
        torch.testing.assert_close(a.log_qzx, own)


# --- discrete latents: toy models built from aevb's discrete latents -----------------------
class OneHotEncoder(LatentVariableModel):
    """Categorical z (V variables, C classes) whose logits are the data itself; uniform prior."""

    name = "diagnostics-toy-categorical"

    def __init__(self, v: int, c: int):
        super().__init__()
        self.latent = categorical_space(v, c)
        self.likelihood = build_likelihood("bernoulli", (v * c,), 0.1, 1e-3)
        self.decoder = nn.Linear(v * c, v * c)
        self.v, self.c = v, c

    def posterior(self, x, y=None):
        return RelaxedCategoricalPosterior(x.view(-1, self.v, self.c))

    def prior(self, y=None):
        return UniformCategoricalPrior(self.v, self.c)

    def decode(self, z, y=None):
        return self.decoder(z.flatten(-2))


class CodeEncoder(LatentVariableModel):
    """A 1 x 2 grid of codes (K = 3) read off the data: x [B, 2] holds the indices."""

    name = "diagnostics-toy-codes"

    def __init__(self):
        super().__init__()
        self.latent = code_space(1, 2, 3)
        self.likelihood = build_likelihood("bernoulli", (2,), 0.1, 1e-3)
        self.codebook = nn.Embedding(3, 2)
        self.decoder = nn.Linear(4, 2)

    def posterior(self, x, y=None):
        idx = x.long().view(-1, 1, 2)
        z_e = self.codebook(idx).permute(0, 3, 1, 2)  # [B, D, 1, 2]
        return CodePosterior(z_e, z_e, idx)

    def prior(self, y=None):
        return UniformCodePrior(1, 2, 3)

    def decode(self, z, y=None):
        return self.decoder(self.codebook(z).flatten(-3))


def test_one_hot_posteriors_covering_a_uniform_prior_give_kl_zero_and_mi_log_n():
    c = 6
    x = 40.0 * torch.eye(c)  # example n puts (almost) all its mass on class n
    model = OneHotEncoder(1, c)
    d = aggregate_kl(aggregate_posterior_sample(model, Examples(x), samples=c))
    assert d["aggregate_kl"] == pytest.approx(0, abs=1e-6)
    assert d["mutual_information"] == pytest.approx(math.log(c), abs=1e-6) == d["mi_bound"]
    assert d["aggregate_kl_loo"] < -30  # no other example produces a draw's class
    # All examples on one class: the aggregate is a point mass, KL = log C, MI = 0.
    same = 40.0 * torch.eye(c)[[0] * c]
    d = aggregate_kl(aggregate_posterior_sample(model, Examples(same), samples=c))
    assert d["aggregate_kl"] == pytest.approx(math.log(c), abs=1e-6)
    assert d["mutual_information"] == pytest.approx(0, abs=1e-6)


def test_code_posteriors_aggregate_to_the_empirical_distribution_of_code_grids():
    x = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 2]])  # grid (0,1) three times, (2,2) once
    s = aggregate_posterior_sample(CodeEncoder(), Examples(x), samples=4)
    d = aggregate_kl(s)
    q = torch.tensor([3 / 4, 3 / 4, 3 / 4, 1 / 4], dtype=torch.float64)
    torch.testing.assert_close(s.log_qz, q.log())
    entropy = -(q.log()).mean()
    assert d["mutual_information"] == pytest.approx(float(entropy))
    assert d["aggregate_kl"] == pytest.approx(float(-entropy) + 2 * math.log(3))
    assert d["aggregate_kl_loo"] is None  # grid (2,2) is seen once: no other posterior has it
    usage = class_usage(s.z, CodeEncoder().latent)  # positions x codes
    torch.testing.assert_close(usage, torch.tensor([[0.75, 0, 0.25], [0, 0.75, 0.25]]).double())


# --- collapse -------------------------------------------------------------------------------
def test_collapse_check_counts_the_units_in_use():
    space = gaussian_space(8)
    ev = {"active_units": 3, "au_variance": [1.0] * 3 + [0.0] * 5}
    c = collapse_check(ev, space, 0.5)
    assert c["collapsed"] and (c["active"], c["total"]) == (3, 8)
    assert "only 3 of 8" in c["warning"] and "\n" not in c["warning"]
    assert not collapse_check(ev, space, 0.3)["collapsed"]
    cat = collapse_check({"kl_per_dim": [0.5, 0.001, 0.2, 0.0]}, categorical_space(4, 3), 0.5)
    assert (cat["active"], cat["total"], cat["collapsed"]) == (2, 4, False)
    codes = collapse_check({}, code_space(2, 2, 64), 0.5, {"usage_perplexity": 7.2, "classes": 64})
    assert codes["collapsed"] and "codebook" in codes["measure"]
    assert collapse_check({}, space)["active"] is None


# --- traversals -----------------------------------------------------------------------------
def _other_units_fixed(z, base, units, per_unit):
    """Every row r of z [R, S, *z], less unit units[r], equals base."""
    for r, u in enumerate(units.tolist()):
        rows = z[r].reshape(z.shape[1], -1, per_unit)
        keep = torch.ones(rows.shape[1], dtype=torch.bool)
        keep[u] = False
        assert torch.equal(rows[:, keep], base.reshape(-1, per_unit)[keep].expand_as(rows[:, keep]))


def test_traversal_rows_move_one_continuous_unit_over_prior_quantiles():
    model, data, _, _ = linear_gaussian(scale=1.0, n=50)
    t = traversal(model, data.x, example=7, rows=10, steps=5)
    assert t.z.shape == (K, 5, K) and t.units.tolist() == list(range(K))  # all units, in order
    base = model.posterior(data.x[7:8]).point()[0]
    torch.testing.assert_close(t.base, base)
    base = t.base
    _other_units_fixed(t.z, base, t.units, 1)
    quantiles = torch.special.ndtri(torch.linspace(0.025, 0.975, 5, dtype=torch.float64))
    for r in range(K):
        torch.testing.assert_close(t.z[r, :, r], quantiles.to(t.z.dtype))
    assert t.column_labels[0] == "2.5%" and t.column_labels[-1] == "97.5%"


def test_large_latents_show_the_top_units_by_kl():
    torch.manual_seed(0)
    config = aevb.RunConfig().replace(
        input_shape=(5,), latent_dim=12, hidden=(), likelihood="gaussian"
    )
    model = aevb.build_model(config)
    (enc,) = model.encoder.net
    with torch.no_grad():  # mu_j = (j + 1) x_0 / 4, logvar 0: KL_j grows with j
        enc.weight.zero_()
        enc.bias.zero_()
        enc.weight[:12, 0] = (torch.arange(12) + 1) / 4
    x = torch.randn(200, 5)
    t = traversal(model, x, example=None, rows=3, steps=4)
    assert t.units.tolist() == [11, 10, 9]
    assert torch.equal(t.base, torch.zeros(12))  # the origin of N(0, I)
    _other_units_fixed(t.z, t.base, t.units, 1)
    assert t.row_labels[0].startswith("z[11]  KL")


def test_traversal_of_discrete_latents_sweeps_classes_with_the_rest_fixed():
    v, c = 3, 4
    model = OneHotEncoder(v, c)
    x = 5.0 * torch.randn(30, v * c, generator=torch.Generator().manual_seed(0))
    t = traversal(model, x, example=2, steps=9)
    assert t.z.shape == (v, c, v, c) and t.column_labels == ["0", "1", "2", "3"]
    _other_units_fixed(t.z, t.base, t.units, c)
    for r in range(v):
        assert torch.equal(t.z[r, :, r], torch.eye(c))  # column s sets variable r to class s
    codes = traversal_latents(
        torch.tensor([[0, 1]]), torch.tensor([1]), torch.tensor([[2, 0]]), CodeEncoder().latent
    )
    assert codes.tolist() == [[[[0, 2]], [[0, 0]]]]


# --- the commands ---------------------------------------------------------------------------
def test_evaluate_diagnostics_json_report_and_figure(run_dir, tmp_path):
    report, figure = tmp_path / "r.md", tmp_path / "q.png"
    res = run_cli(
        "evaluate", run_dir, "--k", "5", "--diagnostics", "--json", "--report", report,
        "--figure", figure,
    )  # fmt: skip
    assert res.code == 0, res.err
    d = json.loads(res.out)["diagnostics"]
    n = d["n_examples"]
    assert n == 180 and d["samples"] == n and d["mi_bound"] == pytest.approx(math.log(n))
    assert -3 * d["mutual_information_se"] <= d["mutual_information"] <= math.log(n)
    assert d["aggregate_kl"] + d["mutual_information"] == pytest.approx(d["rate_mc"])
    assert d["collapse"]["total"] == 2 and d["figure"] == str(figure) and figure.stat().st_size
    text = report.read_text()
    assert "## Posterior diagnostics" in text and "KL(q(z) \\|\\| p(z))" in text
    assert "Estimator: stratified Monte Carlo" in text


@pytest.fixture(scope="module")
def collapsed_run(digits_run_4d, tmp_path_factory):
    """The 4-D digits run with its encoder's last layer zeroed: q(z|x) = N(0, I) for all x."""
    run = tmp_path_factory.mktemp("collapsed") / "run"
    shutil.copytree(digits_run_4d, run)
    model = aevb.load(run)
    last = [m for m in model.encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    ckpt.save_model(model, run)
    return run


def test_a_collapsed_posterior_is_warned_about_in_one_line(collapsed_run, tmp_path):
    res = run_cli("evaluate", collapsed_run, "--k", "2", "--diagnostics", "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)["diagnostics"]
    assert d["collapse"]["collapsed"] and d["collapse"]["active"] == 0
    assert abs(d["aggregate_kl"]) < 1e-5 and abs(d["mutual_information"]) < 1e-5
    notes = [ln for ln in res.err.splitlines() if "posterior collapse" in ln]
    assert len(notes) == 1 and notes[0].startswith("aevb evaluate: note: posterior collapse")
    res = run_cli(
        "evaluate", collapsed_run, "--k", "2", "--diagnostics", "--collapse-threshold", "0",
        "--json", "--figure", tmp_path / "f.png",
    )  # fmt: skip
    assert res.code == 0 and "collapse" not in res.err
    assert not json.loads(res.out)["diagnostics"]["collapse"]["collapsed"]


def test_traverse_command_and_its_errors(run_dir, tmp_path):
    for args in ([], ["--origin", "--rows", "1", "--steps", "3"], ["--example", "179"]):
        out = tmp_path / f"t{len(args)}.png"
        res = run_cli("traverse", run_dir, *args, "--out", out)
        assert res.code == 0, res.err
        assert res.out.strip() == str(out) and out.stat().st_size > 0
    assert_one_line_error(run_cli("traverse", run_dir, "--example", "180"), "--example", "180")
    assert_one_line_error(run_cli("traverse", run_dir, "--steps", "1"), "--steps")
    assert_one_line_error(run_cli("traverse", run_dir, "--out", tmp_path / "t.txt"), ".png")
    assert_one_line_error(
        run_cli("evaluate", run_dir, "--figure", tmp_path / "f.png"), "--diagnostics"
    )


def test_training_draws_the_traversal_figure(run_dir):
    assert (run_dir / ckpt.FIGURES_DIR / "traversals.png").stat().st_size > 0


@pytest.mark.parametrize("make", [lambda: OneHotEncoder(3, 4), CodeEncoder], ids=["cat", "codes"])
def test_discrete_latents_draw_both_figures(make, tmp_path):
    model = make()
    g = torch.Generator().manual_seed(0)
    if model.latent.kind == "codes":
        x = torch.randint(3, (40, 2), generator=g).float()
    else:
        x = 3 * torch.randn(40, 12, generator=g)
    s = aggregate_posterior_sample(model, Examples(x), samples=40)
    d = aggregate_kl(s)
    prior_z = prior_sample(model, len(s.z))
    usage = class_usage(prior_z, model.latent)
    torch.testing.assert_close(usage.sum(-1), torch.ones(len(usage), dtype=torch.float64))
    plot_posterior_vs_prior(s.z, prior_z, model.latent, tmp_path / "q.png", d)
    plot_traversal(model, x, tmp_path / "t.png", steps=3)
    assert (tmp_path / "q.png").stat().st_size and (tmp_path / "t.png").stat().st_size
