"""Bits per dimension are reported only where they are honest, and the 32x32x3 pipeline works.

``bits_per_dim`` for a probability of the data's values (Bernoulli on binary data, the
discretized logistic mixture on 8-bit data), ``bits_per_dim_dequantized`` for a density on
8-bit data (an upper bound on the bits/dim of the discrete model the density defines,
checked here against the exact bin probabilities of a Gaussian), neither otherwise. The
resnet architecture with ``--likelihood dmol`` trains on files in the CIFAR-10 binary
format and reports test bits/dim.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import tarfile

import numpy as np
import pytest
import torch
from helpers import run_cli

from aevb.data import cifar10 as cf
from aevb.estimators import dequantized_bits_per_dim
from aevb.evaluate import bits_per_dim_kind

DT = torch.float64
SMALL = ["--batch-size", "16", "--eval-batch-size", "32", "--no-progress", "--figures", "false"]


def test_which_bits_per_dim_are_honest():
    kind = lambda *a: bits_per_dim_kind("lik", *a)[0]  # noqa: E731
    # (discrete likelihood, probability of these data, binary data, 8-bit data)
    assert kind(True, True, True, True) == "discrete"  # bernoulli on binary data
    assert kind(True, True, False, True) == "discrete"  # dmol on 8-bit data
    assert kind(True, False, False, True) is None  # bernoulli on grey levels
    assert kind(False, False, False, True) == "dequantized"  # a density on 8-bit data
    assert kind(False, False, True, True) is None  # a density on binary data
    assert kind(False, False, False, False) is None  # a density on continuous data
    assert "upper bound" in bits_per_dim_kind("gaussian", False, False, False, True)[1]


@pytest.mark.parametrize("mu, sigma", [(0.5, 0.1), (0.2, 0.01), (0.9, 0.002), (0.0, 0.05)])
def test_dequantized_bits_bound_the_exact_discrete_model(mu, sigma):
    """For a Gaussian density, P(v) = Phi((v + 1/2)/255) - Phi((v - 1/2)/255) exactly; the
    dequantised bits (-E_u log p(x + u/255) + log 255) / ln 2 are never below -log2 P(v),
    and meet it when sigma spans many bins."""
    v = torch.arange(256, dtype=DT)
    x = v / 255
    # log P(v) from the tail on x's side of mu (no cancellation far from the mean)
    lo, hi = ((v - 0.5) / 255 - mu) / sigma, ((v + 0.5) / 255 - mu) / sigma
    flip = lo > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)  # P = Phi(b) - Phi(a)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    p_bin = torch.exp(log_b + torch.log1p(-torch.exp(log_a - log_b)))
    # E_u[-log p(x + u/255)], u ~ U(-1/2, 1/2): the Gaussian's log-density is quadratic
    e_sq = (x - mu) ** 2 + 1 / (12 * 255**2)
    neg_log_py = 0.5 * math.log(2 * math.pi * sigma**2) + e_sq / (2 * sigma**2)
    bits = dequantized_bits_per_dim(-neg_log_py, num_dims=1)
    exact = -torch.log2(p_bin)
    ok = p_bin > 1e-300  # where the exact probability is representable
    assert (bits[ok] >= exact[ok] - 1e-9).all()
    near = (x - mu).abs() < 2 * sigma
    if sigma >= 0.05:
        assert (bits - exact)[near].abs().max() < 2e-3  # tight for a smooth density
    # per dimension: D dimensions add D log 255 nats
    two = dequantized_bits_per_dim(torch.tensor([-3.0, 1.0], dtype=DT), num_dims=2)
    torch.testing.assert_close(
        two, (torch.tensor([3.0, -1.0], dtype=DT) + 2 * math.log(255)) / (2 * math.log(2))
    )


def cifar_folder(tmp_path, monkeypatch, per_batch: int = 6):
    """A CIFAR-10 binary archive of random records in DATA_DIR/cifar10, accepted by its checksum."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (*cf.TRAIN_BATCHES, cf.TEST_BATCH):
            rec = rng.integers(0, 256, (per_batch, cf.RECORD), dtype=np.uint8)
            rec[:, 0] %= 10
            # smooth-ish images: a random grey level per image plus small noise
            base = rng.integers(40, 200, (per_batch, 1))
            rec[:, 1:] = np.clip(base + rng.integers(-20, 21, (per_batch, cf.RECORD - 1)), 0, 255)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            data = rec.tobytes()
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / cf.FILE.name).write_bytes(archive)
    sha = hashlib.sha256(archive).hexdigest()
    remote = dataclasses.replace(
        cf.FILE, urls=("http://127.0.0.1:9/",), sha256=sha, size=len(archive)
    )
    monkeypatch.setattr(cf, "FILE", remote)
    return tmp_path


def test_resnet_dmol_trains_on_cifar_format_files_and_reports_bits_per_dim(tmp_path, monkeypatch):
    data = cifar_folder(tmp_path, monkeypatch)
    run = tmp_path / "run"
    args = ["--dataset", "cifar10", "--data-dir", data, "--valid-fraction", "0.2"]
    model = [
        "--arch",
        "resnet",
        "--hidden",
        "8,16",
        "--latent-dim",
        "4",
        "--likelihood",
        "dmol",
        "--mixtures",
        "2",
    ]
    res = run_cli("train", *SMALL, *args, *model, "--steps", "4", "--out", run)
    assert res.code == 0, res.err
    res = run_cli("evaluate", run, "--k", "3", "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert (
        d["n_examples"] == 6
        and d["num_dims"] == 3 * 32 * 32
        and d["bits_per_dim_kind"] == "discrete"
    )
    assert d["bits_per_dim"] == pytest.approx(-d["log_px_iw"] / (3072 * math.log(2)), rel=1e-6)
    assert d["bits_per_dim"] > 0  # a probability: -log2 P >= 0
    assert "bits_per_dim_dequantized" not in d
    res = run_cli("reconstruct", run, "-n", "2", "--out", tmp_path / "r.png")
    assert res.code == 0, res.err


def test_a_density_on_8_bit_data_reports_the_dequantised_bound(tmp_path):
    a = np.random.default_rng(3).integers(0, 256, (80, 1, 4, 4), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", a)
    run = tmp_path / "run"
    res = run_cli(
        "train", *SMALL, "--dataset", tmp_path / "u8.npy", "--dequantize", "uniform",
        "--hidden", "16", "--latent-dim", "2", "--steps", "6", "--out", run,
    )  # fmt: skip
    assert res.code == 0, res.err
    res = run_cli("evaluate", run, "--k", "4", "--json", "--report", tmp_path / "r.md")
    d = json.loads(res.out)
    assert d["bits_per_dim_kind"] == "dequantized" and "bits_per_dim" not in d
    assert "bits_per_dim_dequantized_se" in d and "dequantised" in d["bits_per_dim_note"]
    assert "dequantised (upper bound)" in (tmp_path / "r.md").read_text()
    # the same seed draws the same dequantisation: evaluation is reproducible
    again = json.loads(run_cli("evaluate", run, "--k", "4", "--json").out)
    assert again["bits_per_dim_dequantized"] == d["bits_per_dim_dequantized"]
