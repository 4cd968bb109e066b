"""Runs written by aevb 0.1 still load, and evaluate to the numbers 0.1 printed for them.

``fixtures/run-v0.1.0`` was trained and scored by the 0.1 release (one flat model
section in its config.json); its ``evaluate --k 50 --json`` output and four mean samples
were saved beside it then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

import aevb

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "run-v0.1.0"


@pytest.fixture
def legacy(tmp_path) -> Path:
    return Path(shutil.copytree(RUN, tmp_path / "run"))


def test_evaluate_gives_the_numbers_of_the_release_that_wrote_it(legacy):
    res = run_cli("evaluate", legacy, "--k", "50", "--json")
    assert res.code == 0, res.err
    now = json.loads(res.out)
    then = json.loads((FIXTURES / "run-v0.1.0.evaluate-k50.json").read_text())
    # 0.1 reported bits/dim for grey digits under a Bernoulli, a cross-entropy and not a
    # probability of the data; they are now omitted, with a note saying why.
    for key in ("bits_per_dim", "bits_per_dim_se"):
        assert key not in now and then.pop(key) is not None
    assert "not binary" in now["bits_per_dim_note"]
    # The CPU's default chunk went from 2048 to 4096 pairs; the results do not depend on it.
    assert then.pop("chunk_size") == 2048 and now["chunk_size"] == 4096
    for key, value in then.items():
        if isinstance(value, float):
            # Float rounding only: log q is now computed from the noise, and the K samples are
            # reduced in float64 blocks instead of chained float32 logaddexps, which moves
            # log p(x) (-39 nats, float32 steps of 3.8e-6) by ~1e-6; the gap, a difference of
            # two such numbers, moves by as much in absolute terms.
            assert now[key] == pytest.approx(value, rel=1e-6, abs=1e-5), key
        elif isinstance(value, list):
            np.testing.assert_allclose(now[key], value, rtol=1e-6, atol=1e-9, err_msg=key)
        else:
            assert now[key] == value, key


def test_samples_are_bit_identical(legacy, tmp_path):
    res = run_cli("sample", legacy, "-n", "4", "--mean", "--out", tmp_path / "s.png")
    assert res.code == 0, res.err
    then = np.load(FIXTURES / "run-v0.1.0.sample-n4-mean.npy")
    assert np.array_equal(np.load(tmp_path / "s.npy"), then)


def test_the_old_config_reads_into_the_new_sections(legacy):
    config = aevb.load(legacy).sections["vae"]
    assert config.latent_dim == 2
    loaded = aevb.RunConfig.from_dict(
        {
            k: v
            for k, v in json.loads((legacy / "config.json").read_text()).items()
            if k != "dataset_info"
        }
    )
    assert loaded.objective.objective == "elbo" and loaded.elbo.samples == 1
    assert loaded.objective.beta == 1.0 and loaded.train.steps == 30


def test_an_old_run_resumes(legacy):
    res = run_cli(
        "train", "--resume", legacy, "--steps", "40", "--no-progress", "--figures", "false"
    )
    assert res.code == 0, res.err
    assert json.loads((legacy / "config.json").read_text())["config_version"] == 2
