"""Shared fixtures: small trained runs on the built-in digits, made once per session.

The tests use one intra-op thread: their tensors are tiny, and on a shared machine a
second OpenMP thread waiting for a busy core makes each op take milliseconds. aevb's
native kernels are compiled into a folder of the test session's (its subprocesses
inherit it), not into the user's cache.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, CliResult, run_cli

torch.set_num_threads(1)

if "AEVB_NATIVE_DIR" not in os.environ:
    _native_dir = tempfile.mkdtemp(prefix="aevb-native-")
    os.environ["AEVB_NATIVE_DIR"] = _native_dir
    atexit.register(shutil.rmtree, _native_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, CliResult]:
    """A digits run trained by ``aevb train`` (2-D latent, figures on); shared read-only."""
    run = tmp_path_factory.mktemp("runs") / "digits"
    res = run_cli("train", *SMALL, "--out", run)
    assert res.code == 0, res.err
    return run, res


@pytest.fixture(scope="session")
def run_dir(digits_run) -> Path:
    return digits_run[0]


@pytest.fixture(scope="session")
def digits_run_4d(tmp_path_factory) -> Path:
    """A digits run with a 4-D latent and no figures (for the manifold error)."""
    run = tmp_path_factory.mktemp("runs") / "digits4d"
    res = run_cli("train", *SMALL, "--latent-dim", "4", "--figures", "false", "--out", run)
    assert res.code == 0, res.err
    return run


# Conditional digits runs (aevb serve's tests): a label-conditioned CVAE with the N(0, I)
# prior, one with a learned p(z|y), and a completion model (top half observed, p(z|x_obs)
# learned).
CVAE_RUNS = {
    "labels": ["--model", "cvae"],
    "labels-prior": ["--model", "cvae", "--conditional-prior", "true", "--latent-dim", "3"],
    "mask": ["--model", "cvae", "--condition", "mask", "--conditional-prior", "true"]
    + ["--latent-dim", "3"],
}


@pytest.fixture(scope="session")
def cvae_run(tmp_path_factory):
    """``cvae_run(name)``: the path of the CVAE_RUNS run ``name``, trained on first use."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            run = tmp_path_factory.mktemp("cvae") / name
            res = run_cli("train", *SMALL, *CVAE_RUNS[name], "--figures", "false", "--out", run)
            assert res.code == 0, res.err
            made[name] = run
        return made[name]

    return get


@pytest.fixture
def binary_npy(tmp_path) -> Path:
    """A user .npy of 300 binary vectors of length 12 (a shape no built-in dataset has)."""
    rng = np.random.default_rng(0)
    path = tmp_path / "binary.npy"
    np.save(path, (rng.random((300, 12)) < 0.3).astype(np.float32))
    return path
