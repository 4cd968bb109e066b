"""The conditional VAE: properties of the label-conditioned and the completion model.

Class rows share their latents exactly; completions keep the observed pixels bit for bit;
the masked likelihood scores the missing part and nothing else; the conditional prior's
closed-form KL agrees with Monte Carlo and torch.distributions; importance-sampled
log p(x|y) sits above the conditional ELBO and rises with K; the CLI refuses what does not
apply in one line; the docstring's Python example runs.
"""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_cli

import aevb
from aevb import RunConfig, build_model
from aevb.estimators import importance_weighted, naive_prior
from aevb.figures import class_rows
from aevb.latents import ConditionalGaussian, DiagonalGaussian, kl_divergence
from aevb.likelihoods import build_likelihood
from aevb.models import cvae as cvae_module
from aevb.models.cvae import MASKS, observed_mask

DT = torch.float64
SMALL = ["--hidden", "32", "--batch-size", "64", "--no-progress", "--figures", "false"]


def label_model(**fields) -> aevb.LatentVariableModel:
    torch.manual_seed(0)
    config = RunConfig().replace(
        model="cvae",
        input_shape=(1, 8, 8),
        likelihood="bernoulli",
        hidden=(32,),
        latent_dim=3,
        **{"cvae.num_classes": 10},
        **fields,
    )
    return build_model(config).to(DT).eval()


def mask_model(mask: str = "top", **fields) -> aevb.LatentVariableModel:
    torch.manual_seed(0)
    config = RunConfig().replace(
        model="cvae",
        condition="mask",
        mask=mask,
        input_shape=(1, 8, 8),
        likelihood=fields.pop("likelihood", "bernoulli"),
        hidden=(32,),
        latent_dim=3,
        **fields,
    )
    return build_model(config).to(DT).eval()


def digits(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    ds = aevb.load_dataset(aevb.DataConfig(dataset="digits"))
    return ds.head("test", n).to(DT), ds.head_labels("test", n)


# --- one row per class -------------------------------------------------------------------
@pytest.mark.parametrize("embedding", ["onehot", "learned"])
def test_class_rows_hold_z_fixed_across_rows(embedding):
    model = label_model(label_embedding=embedding)
    z, x = class_rows(model, n=5, seed=3)
    assert z.shape == (10, 5, 3) and x.shape == (10, 5, 1, 8, 8)
    for k in range(10):
        assert torch.equal(z[k], z[0])  # the same latents in every row ...
    assert not torch.equal(x[1], x[0])  # ... decoded with another class
    # the same seed gives the same grid; another seed other latents
    assert torch.equal(class_rows(model, n=5, seed=3)[0], z)
    assert not torch.equal(class_rows(model, n=5, seed=4)[0], z)


def test_class_rows_share_the_noise_under_a_learned_conditional_prior():
    model = label_model(conditional_prior=True)
    with torch.no_grad():  # make the class priors differ
        for p in model.prior_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    z, _ = class_rows(model, n=4, seed=1)
    eps = []
    for k in range(10):
        p = model.prior(torch.full((4,), k))
        eps.append((z[k] - p.mu) / torch.exp(0.5 * p.logvar))
    for k in range(1, 10):
        torch.testing.assert_close(eps[k], eps[0])  # z_k = mu(k) + sigma(k) * (one eps)
    assert not torch.allclose(z[1], z[0])


# --- completion ----------------------------------------------------------------------------
@pytest.mark.parametrize("mask", MASKS)
def test_completion_leaves_the_observed_pixels_exactly_as_given(mask):
    model = mask_model(mask)
    x, _ = digits(6)
    done = model.complete(x, 5, generator=torch.Generator().manual_seed(0))
    seen = observed_mask(mask, (1, 8, 8))
    assert done.shape == (5, 6, 1, 8, 8)
    assert torch.equal(done[:, :, seen], x[:, seen].expand(5, -1, -1))  # bit for bit
    assert 0 < int(seen.sum()) < 64
    # the missing part is sampled: the completions differ from one another
    assert not torch.equal(done[0][:, ~seen], done[1][:, ~seen])
    mean = model.complete(x, 2, mean=True)  # E[x_mis | z, x_obs]: still the observed part as given
    assert torch.equal(mean[:, :, seen], done[:2, :, seen])


def test_masks_observe_what_they_say():
    top, left = observed_mask("top", (3, 6, 4)), observed_mask("left", (3, 6, 4))
    assert top[:, :3].all() and not top[:, 3:].any()
    assert left[:, :, :2].all() and not left[:, :, 2:].any()
    centre = observed_mask("center", (1, 28, 28))
    assert centre[0].any(0).nonzero().flatten().tolist() == [12, 13, 14]  # 28 // 8 = 3 columns
    rnd = observed_mask("random", (2, 8, 8), seed=5)
    assert int(rnd[0].sum()) == 32 and torch.equal(rnd[0], rnd[1])
    assert torch.equal(rnd, observed_mask("random", (2, 8, 8), seed=5))
    assert not torch.equal(rnd, observed_mask("random", (2, 8, 8), seed=6))


@pytest.mark.parametrize("name", ["bernoulli", "gaussian-pixel", "dmol"])
def test_the_masked_likelihood_scores_the_missing_part_only(name):
    event = (3, 4, 5)
    lik = build_likelihood(name, event, 0.2, 1e-3, **({"mixtures": 2} if name == "dmol" else {}))
    lik = lik.to(DT)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, *event), generator=g).to(DT) / 255
    params = torch.randn(2, 6, *lik.param_shape, generator=g, dtype=DT)
    missing = (~observed_mask("random", event, seed=1)).to(DT)
    part, rest = lik.log_prob_where(x, params, missing), lik.log_prob_where(x, params, 1 - missing)
    torch.testing.assert_close(part + rest, lik.log_prob(x, params))  # the parts add up
    assert part.shape == (2, 6)
    changed = torch.where(missing.bool(), x, 1 - x)  # other values where nothing is scored
    torch.testing.assert_close(lik.log_prob_where(changed, params, missing), part, rtol=0, atol=0)


def test_completion_model_counts_only_the_missing_dimensions():
    model = mask_model("left")
    assert model.num_scored_dims() == 32 and torch.equal(
        model.scored_mask.bool(), ~observed_mask("left", (1, 8, 8))
    )
    assert label_model().num_scored_dims() == 64


# --- the KL and the bound --------------------------------------------------------------------
def test_conditional_prior_kl_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(4, 3, generator=g, dtype=DT) for _ in range(4))
    q, p = DiagonalGaussian(mu_q, lv_q), ConditionalGaussian(mu_p, lv_p)
    kl = kl_divergence(q, p)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_q, torch.exp(0.5 * lv_q)),
        torch.distributions.Normal(mu_p, torch.exp(0.5 * lv_p)),
    )
    torch.testing.assert_close(kl.per_dim, ref)
    eps = torch.randn(200_000, 4, 3, generator=g, dtype=DT)
    z, log_q = q.sample_and_log_prob(eps)
    mc = (log_q - p.log_prob(z)).mean(0)
    torch.testing.assert_close(mc, kl.total, rtol=0, atol=0.03)


@pytest.mark.parametrize("kind", ["label", "label-conditional-prior", "mask"])
def test_importance_sampled_log_p_bounds_the_conditional_elbo(kind):
    model = mask_model() if kind == "mask" else label_model(conditional_prior="prior" in kind)
    with torch.no_grad():  # a posterior away from the prior, so the gap is worth measuring
        for p in model.encoder.parameters():
            p.mul_(3.0)
    x, y = digits(40)
    small = importance_weighted(model, x, 1, y=y, seed=1)
    big = importance_weighted(model, x, 500, y=y, seed=1)
    # K = 1 is the ELBO on the same noise; K = 500 is above it on average and by Jensen
    # never below the mean of its own log-weights.
    assert float(big["log_px_iw"].mean()) > float(small["log_px_iw"].mean())
    assert float(big["log_px_iw"].mean()) >= -float(big["neg_elbo"].mean())
    assert (big["gap"] > -1e-9).float().mean() > 0.9
    naive = naive_prior(model, x, 50, y=y)
    assert naive.shape == (40,) and torch.isfinite(naive).all()


def test_naive_estimate_draws_per_example_under_a_conditional_prior():
    model = label_model(conditional_prior=True)
    x, y = digits(3)
    a = naive_prior(model, x, 20000, y=y, seed=0)
    b = importance_weighted(model, x, 20000, y=y, seed=0)["log_px_iw"]
    torch.testing.assert_close(a, b, rtol=0, atol=0.2)  # both estimate log p(x|y)


# --- the Python API and the CLI ----------------------------------------------------------------
def test_the_docstring_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(cvae_module) if t.examples]
    assert tests, "the module docstring has an example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0
    assert (tmp_path / "runs/cvae-digits/model.safetensors").exists()


def test_the_docs_python_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "conditional.md"
    blocks = re.findall(r"```py\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "docs/conditional.md", "exec"), namespace)
    assert namespace["threes"].shape == (8, 1, 8, 8)
    assert namespace["report"]["log_px_name"] == "log p(x | y)"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cvae")
    out = {}
    for name, extra in (
        ("vae", []),
        ("cvae", ["--model", "cvae", "--latent-dim", "3"]),
        ("mask", ["--model", "cvae", "--condition", "mask", "--mask", "left"]),
    ):
        res = run_cli("train", *SMALL, *extra, "--steps", "15", "--out", root / name)
        assert res.code == 0, res.err
        out[name] = root / name
    return root, out


def test_config_records_the_classes_and_evaluate_names_log_p_x_given_y(runs):
    root, run = runs
    info = json.loads((run["cvae"] / "config.json").read_text())
    assert info["dataset_info"]["num_classes"] == 10 and info["cvae"]["num_classes"] == 10
    assert json.loads((run["vae"] / "config.json").read_text())["dataset_info"]["num_classes"] == 10
    res = run_cli("evaluate", run["cvae"], "--k", "5", "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out)["log_px_name"] == "log p(x | y)"
    res = run_cli("evaluate", run["mask"], "--k", "5", "--json")
    d = json.loads(res.out)
    assert d["log_px_name"] == "log p(x_missing | x_observed)" and d["num_dims"] == 32


def test_sample_by_label_and_the_class_command(runs):
    root, run = runs
    res = run_cli("sample", run["cvae"], "--label", "3", "-n", "5", "--out", root / "s.png")
    assert res.code == 0, res.err
    assert np.load(root / "s.npy").shape == (5, 1, 8, 8)
    res = run_cli("classes", run["cvae"], "-n", "4", "--mean", "--out", root / "c.png")
    assert res.code == 0, res.err
    grid = np.load(root / "c.npy")
    model = aevb.load(run["cvae"])
    y = torch.full((4,), 3)
    z = model.prior(y).sample(4, 1.0, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(grid[3], model.generate(z, y).numpy())  # row 3 is class 3


def test_complete_command_writes_the_grid_and_the_array(runs, tmp_path):
    root, run = runs
    x, _ = digits(3)
    np.save(tmp_path / "three.npy", (x.float().numpy() * 16).round().astype(np.float32) / 16)
    res = run_cli("complete", run["mask"], "--input", tmp_path / "three.npy", "-n", "4")
    assert res.code == 0, res.err
    out = run["mask"] / "figures" / "completions.png"
    assert res.out.strip() == str(out) and out.exists()
    arr = np.load(out.with_suffix(".npy"))
    seen = observed_mask("left", (1, 8, 8)).numpy()
    assert arr.shape == (3, 4, 1, 8, 8)
    np.testing.assert_array_equal(
        arr[:, :, seen], np.repeat(x.float().numpy()[:, None], 4, 1)[:, :, seen]
    )
    from PIL import Image

    Image.fromarray((x[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "one.png")
    res = run_cli(
        "complete", run["mask"], "--input", tmp_path / "one.png", "--out", tmp_path / "o.png"
    )
    assert res.code == 0, res.err and np.load(tmp_path / "o.npy").shape == (1, 8, 1, 8, 8)


def test_what_does_not_apply_is_refused_in_one_line(runs, tmp_path):
    root, run = runs
    out = tmp_path / "x.png"
    assert_one_line_error(run_cli("sample", run["vae"], "--label", "1", "--out", out), "--label")
    assert_one_line_error(run_cli("sample", run["cvae"], "--label", "10", "--out", out), "0..9")
    assert_one_line_error(run_cli("sample", run["mask"], "--out", out), "aevb complete")
    assert_one_line_error(run_cli("classes", run["vae"], "--out", out), "class labels")
    np.save(tmp_path / "x.npy", np.zeros((8, 8), np.uint8))
    for r in (run["vae"], run["cvae"]):
        res = run_cli("complete", r, "--input", tmp_path / "x.npy", "--out", out)
        assert_one_line_error(res, "--condition mask")
    res = run_cli("complete", run["mask"], "--input", tmp_path / "x.npy", "--mask", "top")
    assert_one_line_error(res, "--mask left")
    np.save(tmp_path / "bad.npy", np.zeros((5, 7), np.uint8))
    res = run_cli("complete", run["mask"], "--input", tmp_path / "bad.npy", "--out", out)
    assert_one_line_error(res, "shape")
    res = run_cli("manifold", run["cvae"], "--out", out)
    assert_one_line_error(res, "context")


def test_a_label_model_refuses_data_without_labels(tmp_path):
    res = run_cli("train", *SMALL, "--model", "cvae", "--dataset", "ring", "--out", tmp_path / "r")
    assert_one_line_error(res, "has none", "--condition mask")
    assert not (tmp_path / "r").exists()
    res = run_cli("train", *SMALL, "--model", "cvae", "--mask", "left", "--out", tmp_path / "r")
    assert_one_line_error(res, "--condition mask")
    res = run_cli(
        "train", *SMALL, "--model", "cvae", "--condition", "mask", "--dataset", "ring",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert_one_line_error(res, "images")
