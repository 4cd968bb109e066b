"""Every command of the CLI end to end on the built-in digits (one small shared run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL, assert_one_line_error, run_cli
from PIL import Image

from aevb import checkpoint as ckpt

COMMANDS = [
    "train",
    "evaluate",
    "sample",
    "reconstruct",
    "interpolate",
    "manifold",
    "embed",
    "info",
    "datasets",
]
N_TEST = 180  # digits: 10% of 1,797 held out for test


def assert_png(path: Path, min_side: int = 50) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        pixels = np.asarray(im.convert("L"))
    assert min(w, h) >= min_side
    assert pixels.std() > 0, f"{path} is a blank picture"
    return w, h


def test_train_leaves_the_run_directory(digits_run):
    run, res = digits_run
    assert res.last_line == str(run)
    assert "neg-ELBO" in res.out and "nats" in res.out
    for name in (ckpt.CONFIG_FILE, ckpt.MODEL_FILE, ckpt.STATE_FILE, ckpt.METRICS_FILE):
        assert (run / name).is_file(), name
    for name in ("curves", "samples", "reconstructions", "interpolation", "latents", "manifold"):
        assert_png(run / ckpt.FIGURES_DIR / f"{name}.png")
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    record = ckpt.read_metrics(run)[-1]
    assert record["step"] == 20
    for key in ("neg_elbo", "recon_nll", "kl"):
        assert np.isfinite(record[f"train_{key}"]) and np.isfinite(record[f"valid_{key}"])
    assert record["valid_neg_elbo"] == pytest.approx(record["valid_recon_nll"] + record["valid_kl"])
    config = json.loads((run / ckpt.CONFIG_FILE).read_text())
    assert config["model"]["hidden"] == [32] and config["model"]["likelihood"] == "bernoulli"
    assert config["dataset_info"]["shape"] == [1, 8, 8]


def test_train_without_out_goes_to_runs_dataset_timestamp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_cli("train", *SMALL[:-3], "--steps", "2", "--figures", "false", "--no-progress")
    assert res.code == 0, res.err
    assert re.fullmatch(r"runs/digits-\d{8}-\d{6}", res.last_line), res.last_line
    assert (tmp_path / res.last_line / ckpt.MODEL_FILE).is_file()


def test_train_from_a_config_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(
        json.dumps(
            {"model": {"latent_dim": 3, "hidden": [16]}, "train": {"steps": 2, "figures": False}}
        )
    )
    res = run_cli(
        "train", "--config", cfg, "--batch-size", "32", "--out", tmp_path / "r", "--no-progress"
    )
    assert res.code == 0, res.err
    saved = json.loads((tmp_path / "r" / ckpt.CONFIG_FILE).read_text())
    assert saved["vae"]["latent_dim"] == 3 and saved["train"]["batch_size"] == 32
    assert saved["model"]["hidden"] == [16]


def test_evaluate_text_and_json(run_dir):
    res = run_cli("evaluate", run_dir)
    assert res.code == 0, res.err
    assert "neg-ELBO" in res.out and "KL" in res.out and f"{N_TEST} examples" in res.out
    res = run_cli("evaluate", run_dir, "--json")
    assert res.code == 0, res.err
    d = json.loads(res.out)
    assert d["n_examples"] == N_TEST and d["split"] == "test"
    assert d["neg_elbo"] == pytest.approx(d["recon_nll"] + d["kl"])
    assert d["kl"] >= 0 and d["neg_elbo_se"] > 0
    # The validation split scored by `evaluate` agrees with what the trainer logged: the
    # closed-form KL exactly, the Monte-Carlo neg-ELBO within its standard error.
    d = json.loads(run_cli("evaluate", run_dir, "--split", "valid", "--json").out)
    logged = ckpt.read_metrics(run_dir)[-1]
    assert d["kl"] == pytest.approx(logged["valid_kl"], rel=1e-9)
    assert abs(d["neg_elbo"] - logged["valid_neg_elbo"]) < 5 * d["neg_elbo_se"]
    # Every example exactly once, whatever the batch size.
    d2 = json.loads(
        run_cli("evaluate", run_dir, "--split", "valid", "--json", "--batch-size", "7").out
    )
    assert d2["n_examples"] == d["n_examples"]


def test_sample_writes_png_and_npy(run_dir, tmp_path):
    out = tmp_path / "s.png"
    res = run_cli("sample", run_dir, "-n", "9", "--out", out)
    assert res.code == 0, res.err
    assert res.last_line == str(out)
    assert_png(out)
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (9, 1, 8, 8)
    assert set(np.unique(x)) <= {0.0, 1.0}  # draws of a Bernoulli decoder
    res = run_cli("sample", run_dir, "-n", "4", "--mean", "--temperature", "0.5", "--out", out)
    assert res.code == 0, res.err
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (4, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    # Seeded: the same command gives the same samples.
    run_cli(
        "sample", run_dir, "-n", "4", "--mean", "--temperature", "0.5", "--out", tmp_path / "t.png"
    )
    assert np.array_equal(x, np.load(tmp_path / "t.npy"))


def test_samples_of_2d_data_are_a_scatter(tmp_path, monkeypatch):
    """2-D points are drawn as points (as in the training figure), not as a heat map."""
    import torch

    from aevb import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or Path(path))
    figures.plot_samples(torch.randn(50, 2), tmp_path / "s.png")
    (ax,) = drawn[0].axes
    assert not ax.images, "2-D samples were drawn as an image"
    assert ax.collections[0].get_offsets().shape == (50, 2)


def test_sample_default_output_is_in_the_run(run_dir):
    res = run_cli("sample", run_dir, "-n", "4")
    assert res.code == 0, res.err
    # the same name as the picture training drew: one naming scheme
    assert Path(res.last_line) == run_dir / ckpt.FIGURES_DIR / "samples.png"
    assert (run_dir / ckpt.FIGURES_DIR / "samples.npy").is_file()


def test_reconstruct(run_dir, tmp_path):
    out = tmp_path / "r.png"
    res = run_cli("reconstruct", run_dir, "-n", "5", "--split", "valid", "--out", out)
    assert res.code == 0, res.err
    assert_png(out)
    assert np.load(tmp_path / "r.npy").shape == (5, 1, 8, 8)


@pytest.mark.parametrize("slerp", [False, True])
def test_interpolate(run_dir, tmp_path, slerp):
    out = tmp_path / "i.png"
    res = run_cli(
        "interpolate",
        run_dir,
        "--steps",
        "6",
        "--pairs",
        "3",
        "--out",
        out,
        *(["--slerp"] if slerp else []),
    )
    assert res.code == 0, res.err
    w, h = assert_png(out)
    assert w > h  # a strip: 6 images across, 3 rows


def test_manifold(run_dir, tmp_path):
    out = tmp_path / "m.png"
    res = run_cli("manifold", run_dir, "--grid", "5", "--out", out)
    assert res.code == 0, res.err
    assert_png(out)


def test_manifold_needs_a_2d_latent(digits_run_4d, tmp_path):
    out = tmp_path / "m.png"
    res = run_cli("manifold", digits_run_4d, "--out", out)
    assert_one_line_error(res, "2-D latent", "shape (4,)", "--latent-dim 2")
    assert not out.exists()


def test_embed_npy_and_csv(run_dir, tmp_path):
    res = run_cli("embed", run_dir, "--out", tmp_path / "z.npy")
    assert res.code == 0, res.err
    z = np.load(tmp_path / "z.npy")
    assert z.shape == (N_TEST, 2) and np.isfinite(z).all()
    res = run_cli("embed", run_dir, "--out", tmp_path / "z.csv")
    assert res.code == 0, res.err
    lines = (tmp_path / "z.csv").read_text().splitlines()
    assert lines[0] == "z1,z2,label" and len(lines) == N_TEST + 1
    table = np.loadtxt(tmp_path / "z.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, :2], z, rtol=1e-6, atol=1e-6)
    assert set(table[:, 2].astype(int)) <= set(range(10))
    res = run_cli("embed", run_dir, "--split", "train", "--out", tmp_path / "train.npy")
    assert np.load(tmp_path / "train.npy").shape[0] > 1000
    res = run_cli("embed", run_dir, "--out", tmp_path / "z.txt")
    assert_one_line_error(res, ".npy or .csv")


def test_info(run_dir):
    res = run_cli("info", run_dir)
    assert res.code == 0, res.err
    assert "latent_dim = 2" in res.out and "[final metrics]" in res.out and "neg-ELBO" in res.out
    d = json.loads(run_cli("info", run_dir, "--json").out)
    assert d["config"]["vae"]["latent_dim"] == 2 and d["status"]["status"] == "finished"
    assert d["final_metrics"]["step"] == 20


def test_datasets():
    res = run_cli("datasets")
    assert res.code == 0
    names = {line.split()[0] for line in res.out.splitlines() if line.strip()}
    assert {"digits", "ring"} <= names


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    res = run_cli(command, "--help")
    assert res.code == 0 and res.out.startswith("usage: aevb " + command)


def test_no_command_prints_help_and_fails():
    res = run_cli()
    assert res.code == 2 and "usage: aevb" in res.out
    for command in COMMANDS:
        assert command in res.out


def test_python_dash_m_is_the_same_program():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "aevb", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: aevb")
    for command in COMMANDS:
        assert command in proc.stdout


def test_help_never_imports_torch():
    """``aevb --help`` and every command's ``--help`` answer without importing torch (fast)."""
    script = (
        "import sys\n"
        "from aevb.cli import build_parser, main\n"
        "build_parser()\n"
        "assert 'torch' not in sys.modules, 'build_parser imported torch'\n"
        f"for command in {COMMANDS!r} + [None]:\n"
        "    try:\n"
        "        main([command, '--help'] if command else ['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    assert 'torch' not in sys.modules, f'aevb {command} --help imported torch'\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("usage: aevb") == len(COMMANDS) + 1
