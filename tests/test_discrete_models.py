"""The Gumbel-softmax VAE and the VQ-VAE as first-class models, and VQ-VAE's learned prior.

The generic doors (train, reload and resume bit-exactly, every command, 2 processes = 1)
are in tests/test_variants.py. Here, the properties of the discrete models themselves:
the exact log p(x) of a small categorical model by enumeration against the ELBO and the
importance-sampled estimate; training with relaxed samples and evaluation with hard ones;
the temperature schedule in metrics.jsonl; VQ-VAE's point-mass bound, its losses and
codebook metrics; and the second stage, `aevb train-prior`: its files, its bit-exact
resume (after Ctrl-C too), its lock, its refusals, and the commands that use the prior.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL_VQVAE, assert_one_line_error, run_cli, state_dicts_equal

import aevb
from aevb import checkpoint as ckpt
from aevb.discrete import PixelCNNCodePrior, UniformCodePrior
from aevb.distributions import categorical_kl_uniform, gumbel_max, gumbel_softmax
from aevb.estimators import importance_weighted
from aevb.objectives import ELBO
from aevb.prior_fit import PRIOR_DIR, SETTINGS_FILE
from aevb.rundir import RunLock
from aevb.schedules import exponential_anneal

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--batch-size", "64", "--no-progress"]
GUMBEL = ["--model", "gumbel", "--variables", "3", "--categories", "4", "--hidden", "32"]
GUMBEL += ["--tau-every", "10", "--tau-rate", "0.02", "--tau-min", "0.4"]
VQVAE = ["--model", "vqvae", "--arch", "conv", "--hidden", "8,8", "--codebook-size", "16"]
VQVAE += ["--code-dim", "4", "--res-blocks", "1", "--restart-after", "4"]
VQVAE += ["--pixelcnn-channels", "8", "--pixelcnn-layers", "2"]


def _build(dtype=torch.float64, **fields):
    model = aevb.build_model(aevb.RunConfig().replace(**fields))
    return model.to(dtype).eval()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(path)[0]


# --- Gumbel-softmax VAE: the model's numbers -------------------------------------------------
def _small_gumbel(**kw):
    torch.manual_seed(0)
    fields = dict(model="gumbel", input_shape=(6,), likelihood="bernoulli", hidden=(8,))
    return _build(**{**fields, "variables": 3, "categories": 3, **kw})


def _all_configurations(n: int, c: int) -> torch.Tensor:
    """Every one-hot z of n variables with c classes: ``[c**n, n, c]``."""
    idx = torch.cartesian_prod(*[torch.arange(c)] * n).view(-1, n)
    return torch.nn.functional.one_hot(idx, c).double()


def test_exact_log_px_bounds_the_elbo_and_is_the_limit_of_importance_sampling():
    model = _small_gumbel()
    x = (torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) < 0.4).double()
    z = _all_configurations(3, 3)  # 27 configurations
    log_px_z = model.log_likelihood(x, z[:, None].expand(-1, 5, -1, -1))  # [27, 5]
    log_pz = model.prior().log_prob(z)[:, None]  # -3 log 3
    assert torch.allclose(log_pz, torch.tensor(-3 * math.log(3.0), dtype=torch.float64))
    exact = torch.logsumexp(log_px_z + log_pz, 0)
    q = model.posterior(x)
    log_q = q.log_prob(z[:, None].expand(-1, 5, -1, -1))  # [27, 5]
    assert torch.allclose(log_q.exp().sum(0), torch.ones(5, dtype=torch.float64))
    elbo = (log_q.exp() * log_px_z).sum(0) - categorical_kl_uniform(q.logits).sum(-1)
    assert (elbo <= exact + 1e-12).all()
    est = importance_weighted(model, x, k=20_000, chunk_size=100_000, seed=3)
    torch.testing.assert_close(est["log_px_iw"], exact, atol=0.02, rtol=0)
    torch.testing.assert_close(-est["neg_elbo"], elbo, atol=0.05, rtol=0)
    torch.testing.assert_close(est["rate"], categorical_kl_uniform(q.logits).sum(-1))


def test_training_uses_relaxed_samples_and_evaluation_hard_ones():
    model = _small_gumbel()
    x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) < 0.5).double()
    eps = torch.rand(1, 4, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logits = model.posterior(x).logits
    kl = categorical_kl_uniform(logits).sum(-1)
    for tau in (1.0, 0.3):
        out = ELBO()(model, x, None, eps, {"tau": tau}, train=True)
        relaxed = gumbel_softmax(logits, eps, tau)
        torch.testing.assert_close(out.recon_nll, -model.log_likelihood(x, relaxed)[0])
        torch.testing.assert_close(out.kl, kl)
    hard = gumbel_max(logits, eps)
    out = ELBO()(model, x, None, eps, {"tau": 0.3}, train=False)
    torch.testing.assert_close(out.recon_nll, -model.log_likelihood(x, hard)[0])
    st = _small_gumbel(straight_through=True)
    out = ELBO()(st, x, None, eps, {"tau": 0.3}, train=True)  # hard forward, relaxed gradient
    torch.testing.assert_close(out.recon_nll, -st.log_likelihood(x, hard)[0])


@pytest.fixture(scope="module")
def gumbel_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gumbel") / "run"
    res = run_cli("train", *GUMBEL, *QUIET, "--epochs", "3", "--out", run)
    assert res.code == 0, res.err
    return run


def test_the_temperature_schedule_is_logged_per_epoch(gumbel_run):
    records = ckpt.read_metrics(gumbel_run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:  # the value in force at the epoch's last step
        assert r["tau"] == exponential_anneal(r["step"] - 1, 1.0, 0.4, 0.02, 10)
    assert records[0]["tau"] > records[-1]["tau"] >= 0.4


def test_gumbel_evaluation_is_the_discrete_models(gumbel_run):
    res = run_cli("evaluate", gumbel_run, "--k", "50", "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["point_mass_posterior"] is False and d["active_units"] is None
    model, data = aevb.load(gumbel_run), aevb.load_dataset(ckpt.load_config(gumbel_run).data)
    with torch.no_grad():
        kl = categorical_kl_uniform(model.posterior(data.tensor("test")).logits).sum(-1)
    assert d["rate"] == pytest.approx(float(kl.mean()), rel=1e-5)
    assert d["neg_elbo"] == pytest.approx(d["distortion"] + d["rate"])
    assert -d["log_px_iw"] <= d["neg_elbo"] + 3 * d["neg_elbo_se"]
    assert len(d["kl_per_dim"]) == 3  # one KL per categorical variable


def test_gumbel_figures_include_samples_and_class_usage(gumbel_run):
    names = {p.name for p in (gumbel_run / ckpt.FIGURES_DIR).iterdir()}
    assert {"samples.png", "class_usage.png", "reconstructions.png"} <= names
    model, data = aevb.load(gumbel_run), aevb.load_dataset(ckpt.load_config(gumbel_run).data)
    chart = model.charts(data.head("test", 100))["class_usage"]
    assert chart.kind == "heatmap" and chart.values.shape == (3, 4)
    torch.testing.assert_close(chart.values.sum(1), torch.ones(3))
    from aevb.serve.explorer import Explorer

    ex = Explorer(gumbel_run)  # the latent-space explorer opens the run too: 3 class indices
    assert ex.decode(ex.origin().unsqueeze(0)).shape == (1, 1, 8, 8) and ex.coord_dim == 3


@pytest.mark.parametrize("model", ["gumbel", "vqvae"])
def test_iwae_refuses_the_discrete_models_in_one_line(model, tmp_path):
    flags = GUMBEL if model == "gumbel" else VQVAE
    res = run_cli("train", *flags, *QUIET, "--objective", "iwae", "--steps", "2", "--out", tmp_path)
    assert_one_line_error(res, "--objective elbo")


def test_vqvae_needs_convolutions(tmp_path):
    res = run_cli("train", "--model", "vqvae", "--steps", "2", "--out", tmp_path / "r")
    assert_one_line_error(res, "--arch conv")
    assert not (tmp_path / "r").exists()


def test_scoreboard_rows_build_jang_et_al_models():
    spec = importlib.util.spec_from_file_location("scoreboard", ROOT / "benchmarks/scoreboard.py")
    scoreboard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scoreboard)
    for name, straight_through in (("gumbel", False), ("gumbel-st", True)):
        row = scoreboard.ROWS[name]
        config = aevb.RunConfig().replace(**row["fields"], input_shape=(1, 28, 28))
        model = aevb.build_model(config)
        assert model.latent.shape == (20, 10) and model.straight_through is straight_through
        sizes = [m.out_features for m in model.encoder.net if hasattr(m, "out_features")]
        assert sizes == [512, 256, 200]
    assert scoreboard.ROWS["gumbel"]["published"][0].startswith("101.5")
    assert scoreboard.ROWS["gumbel-st"]["published"][0].startswith("107.8")


# --- VQ-VAE: the model's numbers --------------------------------------------------------------
def _small_vqvae(**kw):
    torch.manual_seed(0)
    return _build(**{**SMALL_VQVAE, **kw})


def test_vqvae_point_mass_bound_uniform_then_learned_prior():
    model = _small_vqvae()
    x = (torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(4)) < 0.4).double()
    q = model.posterior(x)
    assert q.indices.shape == (6, 4, 4)
    # Decoding the indices and the straight-through vectors gives the same numbers.
    eps = torch.empty(1, 6, 0, dtype=torch.float64)
    torch.testing.assert_close(
        model.decode(q.sample(eps)), model.decode(q.rsample(eps)), rtol=0, atol=0
    )
    log_px_z = model.log_likelihood(x, q.indices[None])[0]
    est = importance_weighted(model, x, k=100)
    assert isinstance(model.prior(), UniformCodePrior)
    torch.testing.assert_close(est["log_px_iw"], log_px_z - 16 * math.log(16))
    torch.testing.assert_close(est["gap"], torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    model.set_prior_fitted(True)
    assert isinstance(model.prior(), PixelCNNCodePrior)
    est = importance_weighted(model, x, k=100)
    torch.testing.assert_close(est["log_px_iw"], log_px_z + model.pixelcnn.log_prob(q.indices))
    torch.testing.assert_close(est["rate"], -model.pixelcnn.log_prob(q.indices))


def test_vqvae_loss_is_the_neg_elbo_plus_the_quantiser_loss():
    x = (torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(5)) < 0.4).double()
    eps = torch.empty(1, 5, 0, dtype=torch.float64)
    for ema in (False, True):
        model = _small_vqvae(ema=ema, commitment=0.3).train()
        with torch.no_grad():  # eq. (3) by hand, with the codebook before the step's update
            flat = model.encoder(x).permute(0, 2, 3, 1).reshape(5, 16, 4)
            book = model.quantizer.codebook.clone()
            sq = torch.cdist(flat, book).pow(2).min(-1).values.sum(1)  # [5]
        out = ELBO()(model, x, None, eps, {"beta": 1.0}, train=True)
        expected = 0.3 * sq if ema else 1.3 * sq  # commitment (+ codebook term without EMA)
        torch.testing.assert_close(out.loss - out.neg_elbo, expected)
        torch.testing.assert_close(out.kl, torch.full((5,), 16 * math.log(16), dtype=torch.float64))
        assert {"usage", "perplexity", "restarts_total", "commitment"} <= set(out.metrics)
        changed = not torch.equal(book, model.quantizer.codebook)
        assert changed == ema  # EMA moves the codebook in the forward pass; Adam would later


def test_vqvae_data_init_puts_the_codebook_on_encoder_outputs():
    model = _small_vqvae(ema=True)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    torch.manual_seed(7)
    model.data_init(x)
    z_e = model.encoder(x).permute(0, 2, 3, 1).reshape(-1, 4)  # 48 vectors for 16 entries
    book = model.quantizer.codebook
    assert (book[:, None, :] == z_e[None]).all(-1).any(1).all(), "every entry is an output"
    assert len({tuple(r.tolist()) for r in model.quantizer.codebook}) == 16  # no repeats
    torch.testing.assert_close(model.quantizer.ema_embed_sum, model.quantizer.codebook)


def test_pixelcnn_prior_sampling_at_zero_temperature_is_greedy():
    model = _small_vqvae()
    model.set_prior_fitted(True)
    a = model.prior().sample(3, temperature=0.0)
    assert (a == a[0]).all()
    torch.testing.assert_close(model.sample(2, temperature=0.0), model.sample(2, temperature=0.0))


# --- VQ-VAE runs, and the learned prior ---------------------------------------------------------
@pytest.fixture(scope="module")
def vq_run(tmp_path_factory) -> Path:
    """A trained VQ-VAE (figures on); tests copy it before they change it."""
    run = tmp_path_factory.mktemp("vq") / "run"
    res = run_cli("train", *VQVAE, *QUIET, "--steps", "45", "--out", run)
    assert res.code == 0, res.err
    return run


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_vqvae_logs_codebook_metrics_and_counts_restarts(vq_run):
    records = ckpt.read_metrics(vq_run)
    for r in records:
        assert 0 < r["train_usage"] <= 1 and 1 <= r["train_perplexity"] <= 16
        assert r["train_commitment"] >= 0
    totals = [r["train_restarts_total"] for r in records]
    assert totals == sorted(totals)
    model = aevb.load(vq_run)
    assert totals[-1] == float(model.quantizer.restarts) > 0
    chart = model.charts(aevb.load_dataset(ckpt.load_config(vq_run).data).tensor("test"))
    counts = chart["codebook_usage"].values
    assert counts.sum() == 180 * 4 and (counts[:-1] >= counts[1:]).all()
    names = {p.name for p in (vq_run / ckpt.FIGURES_DIR).iterdir()}
    assert {"reconstructions.png", "codebook_usage.png", "samples.png"} <= names


def test_checkpoint_checks_leave_the_codebook_state_alone(tmp_path):
    """Saving mid-epoch first checks the weights on the last batch; that forward pass must
    not move an EMA codebook or restart entries, or the checkpoints would change the run."""
    flags = [*VQVAE, "--ema", "--restart-after", "2", *QUIET, "--steps", "20", "--figures", "false"]
    assert run_cli("train", *flags, "--out", tmp_path / "a").code == 0
    res = run_cli("train", *flags, "--checkpoint-every", "3", "--out", tmp_path / "b")
    assert res.code == 0, res.err
    a, b = (_tensors(tmp_path / r / ckpt.MODEL_FILE) for r in "ab")
    assert state_dicts_equal(a, b)


@pytest.fixture(scope="module")
def prior_run(vq_run, tmp_path_factory) -> Path:
    """vq_run with its prior fitted for 30 steps (an epoch is 11 steps at batch 128)."""
    run = _copy(vq_run, tmp_path_factory.mktemp("prior") / "run")
    res = run_cli("train-prior", run, "--steps", "30", "--no-progress")
    assert res.code == 0, res.err
    assert res.last_line == str(run)
    return run


def test_train_prior_writes_its_state_and_the_model_uses_the_prior(prior_run, vq_run):
    prior_dir = prior_run / PRIOR_DIR
    assert {ckpt.STATE_FILE, ckpt.METRICS_FILE, SETTINGS_FILE} <= {
        p.name for p in prior_dir.iterdir()
    }
    records = ckpt.read_metrics(prior_dir)
    assert [r["step"] for r in records] == [11, 22, 30]
    uniform = 4 * math.log(16)  # 2 x 2 codes of 16 entries
    assert records[-1]["valid_neg_log_prior"] < uniform
    model = aevb.load(prior_run)
    assert isinstance(model.prior(), PixelCNNCodePrior)
    state = _tensors(prior_dir / ckpt.STATE_FILE)
    state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    assert state_dicts_equal(model.pixelcnn.state_dict(), state)
    # The autoencoder is what it was: only the prior and its flag changed.
    before, after = _tensors(vq_run / ckpt.MODEL_FILE), _tensors(prior_run / ckpt.MODEL_FILE)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("pixelcnn.") or k == "prior_fitted" for k in changed)


def test_evaluate_with_the_learned_prior_reports_the_bound(prior_run, tmp_path):
    res = run_cli("evaluate", prior_run, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    model, data = aevb.load(prior_run), aevb.load_dataset(ckpt.load_config(prior_run).data)
    with torch.no_grad():
        codes = model.posterior(data.tensor("test")).indices
        rate = -model.pixelcnn.log_prob(codes).double().mean()
    assert d["point_mass_posterior"] is True
    assert d["rate"] == pytest.approx(float(rate), rel=1e-5) and d["rate"] < 4 * math.log(16)
    assert d["log_px_iw"] == pytest.approx(-d["neg_elbo"], abs=1e-4)
    # grey digits under a Bernoulli are a cross-entropy, not a probability: no bits/dim
    assert "bits_per_dim" not in d and d["bits_per_dim_note"]
    report = tmp_path / "r.md"
    assert run_cli("evaluate", prior_run, "--report", report).code == 0
    text = report.read_text()
    assert "a bound" in text and "point mass" in text


def test_sample_reconstruct_embed_and_info_after_train_prior(prior_run, tmp_path):
    model = aevb.load(prior_run)
    res = run_cli("sample", prior_run, "-n", "5", "--seed", "3", "--out", tmp_path / "s.png")
    assert res.code == 0, res.err
    drawn = torch.from_numpy(np.load(tmp_path / "s.npy"))
    gen = torch.Generator().manual_seed(3)
    codes = model.pixelcnn.sample(5, 1.0, gen)  # the CLI's draws: PixelCNN codes, then x|z
    torch.testing.assert_close(drawn, model.generate(codes, mean=False, generator=gen))
    res = run_cli("embed", prior_run, "--out", tmp_path / "z.csv")
    assert res.code == 0, res.err
    table = np.loadtxt(tmp_path / "z.csv", delimiter=",", skiprows=1)
    data = aevb.load_dataset(ckpt.load_config(prior_run).data)
    codes = model.posterior(data.tensor("test")).indices.flatten(1)
    assert np.array_equal(table[:, :4], codes.numpy())
    assert np.array_equal(table[:, 4], data.labels("test").numpy())
    for cmd in (
        ["reconstruct", prior_run, "-n", "4", "--out", tmp_path / "r.png"],
        ["sample", prior_run, "-n", "2", "--temperature", "0", "--out", tmp_path / "t.png"],
        ["info", prior_run],
    ):
        res = run_cli(*cmd)
        assert res.code == 0, (cmd, res.err)
    from aevb.serve.explorer import Explorer

    ex = Explorer(prior_run)  # the latent-space explorer opens the run too
    assert ex.decode(ex.origin().unsqueeze(0)).shape == (1, 1, 8, 8)


def test_train_prior_resumes_bit_exactly(prior_run, vq_run, tmp_path):
    cut = _copy(vq_run, tmp_path / "cut")
    assert run_cli("train-prior", cut, "--steps", "13", "--no-progress").code == 0
    assert isinstance(aevb.load(cut).prior(), PixelCNNCodePrior)
    res = run_cli("train-prior", cut, "--steps", "30", "--no-progress")
    assert res.code == 0, res.err
    for name in (f"{PRIOR_DIR}/{ckpt.STATE_FILE}", ckpt.MODEL_FILE):
        assert state_dicts_equal(_tensors(cut / name), _tensors(prior_run / name)), name
    # The cut logged a line where it stopped (step 13), then the epochs to come, as `train` does.
    cut_log, straight_log = (
        ckpt.read_metrics(cut / PRIOR_DIR),
        ckpt.read_metrics(prior_run / PRIOR_DIR),
    )
    assert [r["step"] for r in cut_log] == [11, 13, 22, 30]
    for key in ("step", "epoch", "valid_neg_log_prior"):
        assert cut_log[-1][key] == straight_log[-1][key]


def test_ctrl_c_saves_the_prior_state_and_the_run_continues_bit_exactly(
    prior_run, vq_run, tmp_path, monkeypatch
):
    import aevb.prior_fit as prior_fit

    cut = _copy(vq_run, tmp_path / "cut")
    real = prior_fit.neg_log_prior
    calls = []

    def interrupting(prior, z):
        if torch.is_grad_enabled():  # a training step, not validation
            calls.append(1)
            if len(calls) == 17:
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes first
        return real(prior, z)

    monkeypatch.setattr(prior_fit, "neg_log_prior", interrupting)
    res = run_cli("train-prior", cut, "--steps", "30", "--no-progress")
    assert_one_line_error(res, "interrupted at step 17", f"aevb train-prior {cut}", code=130)
    state = json.loads(ckpt.load_tensors(cut / PRIOR_DIR / ckpt.STATE_FILE)[1]["aevb"])
    assert state["progress"]["step"] == 17
    assert isinstance(aevb.load(cut).prior(), UniformCodePrior)  # the model file is untouched
    monkeypatch.setattr(prior_fit, "neg_log_prior", real)
    res = run_cli("train-prior", cut, "--no-progress")  # the stored settings: 30 steps
    assert res.code == 0, res.err
    for name in (f"{PRIOR_DIR}/{ckpt.STATE_FILE}", ckpt.MODEL_FILE):
        assert state_dicts_equal(_tensors(cut / name), _tensors(prior_run / name)), name


def test_train_prior_refusals_are_one_line(prior_run, vq_run, gumbel_run, tmp_path):
    res = run_cli("train-prior", prior_run, "--no-progress")
    assert_one_line_error(res, "already fitted to step 30", "--epochs")
    assert_one_line_error(run_cli("train-prior", gumbel_run), "has no learned prior")
    assert_one_line_error(run_cli("train-prior", tmp_path / "nothing"), "does not exist")
    assert_one_line_error(run_cli("train-prior", prior_run, "--lr", "-1"), "--lr")
    with RunLock(prior_run):
        res = run_cli("train-prior", prior_run, "--steps", "40", "--no-progress")
        assert_one_line_error(res, "in use by process", str(os.getpid()))
    # Training the autoencoder further changes the codes: the old prior state is refused,
    # and the model goes back to the uniform prior it was trained with.
    run = _copy(prior_run, tmp_path / "more")
    res = run_cli("train", "--resume", run, "--steps", "50", "--no-progress")
    assert res.code == 0, res.err
    assert isinstance(aevb.load(run).prior(), UniformCodePrior)
    res = run_cli("train-prior", run, "--steps", "40", "--no-progress")
    assert_one_line_error(res, "other codes", f"remove {run / PRIOR_DIR}")
    shutil.rmtree(run / PRIOR_DIR)
    res = run_cli("train-prior", run, "--steps", "5", "--no-progress")
    assert res.code == 0, res.err


def test_train_prior_redraws_the_samples_from_the_learned_prior(prior_run, vq_run):
    before = (vq_run / ckpt.FIGURES_DIR / "samples.png").read_bytes()
    after = (prior_run / ckpt.FIGURES_DIR / "samples.png").read_bytes()
    assert before != after


# --- the documentation ------------------------------------------------------------------------
def test_every_command_in_docs_discrete_parses_and_builds_its_model():
    """docs/discrete.md's commands take effect as written (too slow to run here in full):
    each parses, and each `train` builds its config and model for the data's shape."""
    import re
    import shlex

    from aevb.cli import _overrides, _train_config, build_parser

    text = (ROOT / "docs" / "discrete.md").read_text()
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
        if line.startswith("aevb ")
    ]
    assert any("train-prior" in line for line in lines)
    shapes = {"digits": (1, 8, 8), "binarized-mnist": (1, 28, 28)}
    trained = 0
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        if args.command == "train":
            config = _train_config(args, _overrides(args))
            shape = shapes[config.data.dataset]
            aevb.build_model(config.replace(input_shape=shape, likelihood="bernoulli"))
            trained += 1
    assert trained == 2
    for code in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        compile(code, "docs/discrete.md", "exec")
