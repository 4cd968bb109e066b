"""Every model variant goes through the same doors: train, save, reload bit-exactly, resume
bit-exactly, every CLI command, and two processes equal one.

A variant is only a set of flags; nothing here branches on the model's kind except where a
command does not apply to its latent space (the manifold grid, spherical interpolation,
interpolation between codebook indices) or to what it conditions on (``sample`` needs an
observed part for a completion model, ``--label`` and ``classes`` need a label-conditioned
one, ``complete`` a completion one), and there the command must refuse in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_cli, state_dicts_equal

import aevb
from aevb import checkpoint as ckpt

BASE = ["--hidden", "32", "--batch-size", "64", "--figures", "false", "--no-progress"]
VARIANTS = {
    "vae": ["--latent-dim", "2"],
    "iwae": ["--objective", "iwae", "--k", "3", "--latent-dim", "3"],
    "hvae": ["--model", "hvae", "--latent-dims", "4,2", "--hidden-top", "8"],
    "hvae-iwae": [
        "--model",
        "hvae",
        "--latent-dims",
        "3,2",
        "--hidden-top",
        "8",
        "--objective",
        "iwae",
        "--k",
        "2",
    ],
    "vamp": ["--prior", "vamp", "--pseudo-inputs", "10", "--latent-dim", "3"],
    "beta-cyclical-freebits": [
        "--beta",
        "2",
        "--beta-schedule",
        "cyclical",
        "--beta-period-steps",
        "10",
        "--free-bits",
        "0.1",
        "--latent-dim",
        "3",
    ],
    # tau falls every 4 steps: the resume must pick the schedule up where it was.
    "gumbel": ["--model", "gumbel", "--variables", "3", "--categories", "4", "--tau-every", "4"]
    + ["--tau-rate", "0.05", "--tau-min", "0.3"],
    "gumbel-st": ["--model", "gumbel", "--straight-through", "--variables", "3", "--categories"]
    + ["4", "--arch", "conv", "--hidden", "8"],
    # codes on a 4 x 4 grid, gradient codebook; on a 2 x 2 grid with EMA. Both restart dead
    # entries (which draws from the RNG), so the resumes cross restarts.
    "vqvae": ["--model", "vqvae", "--arch", "conv", "--hidden", "8", "--codebook-size", "16"]
    + ["--code-dim", "4", "--res-blocks", "1", "--restart-after", "3"]
    + ["--pixelcnn-channels", "8", "--pixelcnn-layers", "2"],
    "vqvae-ema": ["--model", "vqvae", "--arch", "conv", "--hidden", "8,8", "--codebook-size"]
    + ["16", "--code-dim", "4", "--ema", "--restart-after", "2"]
    + ["--pixelcnn-channels", "8", "--pixelcnn-layers", "2"],
    "cvae": ["--model", "cvae", "--latent-dim", "3"],
    "cvae-learned-prior": ["--model", "cvae", "--label-embedding", "learned", "--context-dim"]
    + ["4", "--conditional-prior", "true", "--latent-dim", "2"],
    "cvae-mask": ["--model", "cvae", "--condition", "mask", "--mask", "top", "--latent-dim", "3"],
}
STEPS = 30  # an epoch is 22 steps: the resume crosses an epoch boundary


def _state(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = ckpt.load_tensors(run / ckpt.STATE_FILE)
    weights, _ = ckpt.load_tensors(run / ckpt.MODEL_FILE)
    return {**tensors, **{f"artifact.{k}": v for k, v in weights.items()}}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    run = root / "straight"
    res = run_cli("train", *BASE, *VARIANTS[name], "--steps", str(STEPS), "--out", run)
    assert res.code == 0, res.err
    return name, run, root


def test_trains_and_reloads_bit_exactly(variant):
    name, run, _ = variant
    model = aevb.load(run)
    weights, _ = ckpt.load_tensors(run / ckpt.MODEL_FILE)
    assert state_dicts_equal(model.state_dict(), weights)
    metrics = ckpt.read_metrics(run)[-1]
    assert metrics["step"] == STEPS and all(
        v is None or not isinstance(v, float) or v == v for v in metrics.values()
    )


def test_resumes_bit_exactly(variant):
    name, run, root = variant
    cut = root / "cut"
    res = run_cli("train", *BASE, *VARIANTS[name], "--steps", "13", "--out", cut)
    assert res.code == 0, res.err
    res = run_cli("train", "--resume", cut, "--steps", str(STEPS), "--no-progress")
    assert res.code == 0, res.err
    a, b = _state(run), _state(cut)
    assert state_dicts_equal(a, b), [k for k in a if not torch.equal(a[k], b[k])][:4]
    assert (
        ckpt.read_metrics(run)[-1]["valid_neg_elbo"] == ckpt.read_metrics(cut)[-1]["valid_neg_elbo"]
    )


def test_every_command_runs(variant):
    name, run, root = variant
    model = aevb.load(run)
    out = root / "out"
    res = run_cli("evaluate", run, "--k", "20", "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["log_px_iw"] <= -d["neg_elbo"] + 3 * d["gap_se"] + 1e-6 or d["gap"] > 0
    assert d["neg_elbo"] == pytest.approx(d["distortion"] + d["rate"])
    for cmd in (
        ["reconstruct", run, "-n", "4", "--out", out / "r.png"],
        ["embed", run, "--out", out / "z.npy"],
        ["info", run],
        ["traverse", run, "--rows", "3", "--steps", "3", "--out", out / "tr.png"],
        ["traverse", run, "--origin", "--out", out / "to.png"],
    ):
        res = run_cli(*cmd)
        assert res.code == 0, (cmd, res.err)
    res = run_cli(
        "evaluate", run, "--k", "2", "--diagnostics", "--diagnostic-samples", "60", "--json",
        "--figure", out / "q.png",
    )  # fmt: skip
    assert res.code == 0, res.err
    d = json.loads(res.out)["diagnostics"]
    assert d["samples"] == 60 and d["n_examples"] == 180
    assert d["mutual_information"] <= d["mi_bound"] + 1e-9
    assert d["rate_mc"] == pytest.approx(d["aggregate_kl"] + d["mutual_information"])
    units = {"categorical": model.latent.shape[0], "codes": model.latent.classes}
    assert d["collapse"]["total"] == units.get(model.latent.kind, model.latent.numel)
    assert (out / "q.png").stat().st_size
    z = torch.from_numpy(__import__("numpy").load(out / "z.npy"))
    assert z.shape == (180, model.latent.summary_dim)
    out.mkdir(exist_ok=True)
    images = aevb.load_dataset(ckpt.load_config(run).data).head("test", 2)
    __import__("numpy").save(out / "x.npy", images.numpy())
    on = model.conditions_on
    for cmd, applies in (
        (
            ["interpolate", run, "--pairs", "2", "--steps", "3", "--out", out / "i.png"],
            model.latent.kind != "codes",  # no straight line between codebook indices
        ),
        (
            ["manifold", run, "--out", out / "m.png"],
            model.latent.shape == (2,) and model.latent.standard_normal and on is None,
        ),
        (["interpolate", run, "--slerp", "--out", out / "sl.png"], model.latent.standard_normal),
        (["sample", run, "-n", "4", "--out", out / "s.png"], on != "observed"),
        (
            ["sample", run, "-n", "4", "--temperature", "0.5", "--out", out / "t.png"],
            on != "observed",
        ),
        (["sample", run, "-n", "4", "--label", "2", "--out", out / "l.png"], on == "labels"),
        (["classes", run, "-n", "3", "--out", out / "c.png"], on == "labels"),
        (
            ["complete", run, "--input", out / "x.npy", "-n", "3", "--out", out / "k.png"],
            on == "observed",
        ),
    ):
        res = run_cli(*cmd)
        if applies:
            assert res.code == 0, res.err
        else:
            assert_one_line_error(res)


@pytest.mark.parametrize(
    "name",
    [
        "iwae",
        "hvae",
        "vamp",
        "beta-cyclical-freebits",
        "gumbel",
        "vqvae",
        "vqvae-ema",
        "cvae",
        "cvae-mask",
    ],
)
def test_two_processes_equal_one(name, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [*BASE, *VARIANTS[name], "--steps", "6"]
    assert run_cli("train", *args, "--out", one).code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "aevb", "train", "--nproc", "2", *args, "--out", str(two)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    a, _ = ckpt.load_tensors(one / ckpt.MODEL_FILE)
    b, _ = ckpt.load_tensors(two / ckpt.MODEL_FILE)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    ma, mb = ckpt.read_metrics(one)[-1], ckpt.read_metrics(two)[-1]
    assert ma["valid_neg_elbo"] == pytest.approx(mb["valid_neg_elbo"], rel=1e-5)


def test_evaluation_memory_is_bounded_by_the_chunk_for_every_variant(variant):
    """At most ``chunk_size`` (example, sample) pairs reach the decoder at once, whatever K."""
    name, run, _ = variant
    model = aevb.load(run)
    data = aevb.load_dataset(ckpt.load_config(run).data)
    seen = []
    real, real_fn = model.log_likelihood, model.log_likelihood_fn

    def counting(x, z, y=None):
        seen.append(z.shape[0] * z.shape[1])
        return real(x, z, y)

    def counting_fn(x, y=None):  # the estimator's prepared (possibly fused) likelihood
        of_z = real_fn(x, y)

        def log_px_z(z):
            seen.append(z.shape[0] * z.shape[1])
            return of_z(z)

        return log_px_z

    model.log_likelihood = counting
    model.log_likelihood_fn = counting_fn
    res = aevb.evaluate(model, data, "test", k=300, chunk_size=128, batch_size=50)
    assert max(seen) <= 128 and res["n_examples"] == 180
