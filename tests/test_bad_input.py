"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, assert_one_line_error, run_cli

from aevb import checkpoint as ckpt

TRAIN = ["train", *SMALL[:-3], "--steps", "2", "--figures", "false", "--no-progress"]


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


@pytest.fixture
def run_copy(run_dir, tmp_path) -> Path:
    """A private copy of the shared digits run, free to be damaged."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _train_fails(tmp_path: Path, *args, fragments=()) -> str:
    out = tmp_path / "out"
    res = run_cli(*TRAIN, *args, "--out", out)
    err = assert_one_line_error(res, *fragments)
    assert not out.exists(), f"a failed train left {sorted(p.name for p in out.iterdir())}"
    return err


# --- data ------------------------------------------------------------------------------
def test_data_shape_not_matching_the_model(run_dir, binary_npy, tmp_path):
    for command in ("evaluate", "reconstruct", "embed"):
        extra = ["--out", tmp_path / "z.npy"] if command == "embed" else []
        res = run_cli(command, run_dir, "--dataset", binary_npy, *extra)
        assert_one_line_error(res, "(12,)", "(1, 8, 8)")
    assert not (tmp_path / "z.npy").exists()


def test_values_outside_unit_interval_for_bernoulli(tmp_path):
    big = _npy(tmp_path / "big.npy", np.linspace(0, 3, 300 * 12, dtype=np.float32).reshape(300, 12))
    _train_fails(
        tmp_path,
        "--dataset",
        big,
        "--likelihood",
        "bernoulli",
        fragments=("bernoulli", "[0, 1]", "gaussian"),
    )


def test_values_outside_unit_interval_when_evaluating(run_dir, tmp_path):
    """Data of the right shape but not in [0, 1]: evaluate refuses it for a Bernoulli model."""
    big = _npy(tmp_path / "big.npy", np.full((50, 8, 8), 2.0, dtype=np.float32))
    res = run_cli("evaluate", run_dir, "--dataset", big)
    assert_one_line_error(res, "[0, 1]")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_data(tmp_path, bad):
    x = np.random.default_rng(0).random((300, 12)).astype(np.float32)
    x[17, 3] = bad
    path = _npy(tmp_path / "bad.npy", x)
    _train_fails(tmp_path, "--dataset", path, fragments=("NaN or inf",))


def test_unknown_dataset_name(tmp_path):
    err = _train_fails(tmp_path, "--dataset", "digitz", fragments=("unknown dataset", "'digitz'"))
    assert "digits" in err.replace("digitz", "") and "ring" in err


def test_missing_data_file(tmp_path):
    _train_fails(tmp_path, "--dataset", tmp_path / "nope.npy", fragments=("nope.npy", "not exist"))


def test_pickled_data_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True)
    _train_fails(tmp_path, "--dataset", path, fragments=("Python objects",))


def test_batch_larger_than_the_training_split_uses_the_whole_split(tmp_path):
    """Small data: the whole training split becomes the batch, with a one-line note."""
    out = tmp_path / "out"
    res = run_cli(*TRAIN, "--batch-size", "100000", "--out", out)
    assert res.code == 0, res.err
    notes = res.err.strip().splitlines()
    assert len(notes) == 1 and "note" in notes[0] and "whole training split" in notes[0]
    assert ckpt.read_metrics(out)[-1]["step"] == 2


def test_bad_model_setting(tmp_path):
    _train_fails(tmp_path, "--latent-dim", "0", fragments=("--latent-dim",))
    for likelihood in ("gaussian-pixel", "gaussian-decoded"):
        args = ("--likelihood", likelihood, "--sigma-min", "-1")
        _train_fails(tmp_path, *args, fragments=("--sigma-min",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent(tmp_path):
    _train_fails(tmp_path, "--device", "cuda", fragments=("cuda", "--device cpu"))


# --- options ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, listed",
    [
        (["train", "--latnt-dim", "3"], ["--latent-dim", "--batch-size", "--dataset"]),
        (["sample", "RUN", "--temprature", "2"], ["--temperature", "--mean"]),
        (["evaluate", "RUN", "--splt", "test"], ["--split", "--json"]),
    ],
)
def test_unknown_option_lists_the_valid_ones(run_dir, argv, listed):
    argv = [str(run_dir) if a == "RUN" else a for a in argv]
    res = run_cli(*argv)
    err = assert_one_line_error(res, "unrecognized", argv[-2], "valid options", code=2)
    for flag in listed:
        assert flag in err


def test_ill_typed_option(tmp_path):
    _train_fails(tmp_path, "--lr", "fast", fragments=("--lr", "number", "'fast'"))


def test_bad_choice_of_split(run_dir):
    assert_one_line_error(run_cli("evaluate", run_dir, "--split", "dev"), "--split", code=2)


def test_config_file_with_unknown_key(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"model": {"latent": 3}}')
    _train_fails(tmp_path, "--config", cfg, fragments=("latent", "latent_dim"))
    _train_fails(tmp_path, "--config", tmp_path / "missing.json", fragments=("does not exist",))


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--lr", "-1"),
        ("--lr", "nan"),
        ("--eval-batch-size", "0"),
        ("--log-every", "0"),
        ("--checkpoint-every", "-1"),
        ("--grad-clip", "-1"),
        ("--patience", "0"),
    ],
)
def test_bad_training_setting(tmp_path, flag, value):
    _train_fails(tmp_path, flag, value, fragments=(flag,))


def test_bad_command_arguments(run_dir, tmp_path):
    assert_one_line_error(run_cli("sample", run_dir, "-n", "0", "--out", tmp_path / "s.png"), "-n")
    for n in ("0", "-3"):
        res = run_cli("reconstruct", run_dir, "-n", n, "--out", tmp_path / "r.png")
        assert_one_line_error(res, "-n")
    for pairs in ("0", "-1"):
        res = run_cli("interpolate", run_dir, "--pairs", pairs, "--out", tmp_path / "i.png")
        assert_one_line_error(res, "--pairs")
    res = run_cli("sample", run_dir, "--temperature", "nan", "--out", tmp_path / "s.png")
    assert_one_line_error(res, "--temperature")
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "i.png").exists()
    assert_one_line_error(run_cli("interpolate", run_dir, "--steps", "1"), "--steps")
    assert_one_line_error(run_cli("manifold", run_dir, "--grid", "1"), "--grid")
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "s.npy").exists()


# --- runs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command", ["evaluate", "sample", "reconstruct", "interpolate", "manifold", "embed", "info"]
)
def test_missing_run_directory(tmp_path, command):
    missing = tmp_path / "no-such-run"
    extra = ["--out", tmp_path / "z.npy"] if command == "embed" else []
    assert_one_line_error(run_cli(command, missing, *extra), str(missing), "does not exist")
    assert not missing.exists()


def test_resume_of_a_missing_run(tmp_path):
    missing = tmp_path / "no-such-run"
    assert_one_line_error(run_cli("train", "--resume", missing, "--steps", "4"), "does not exist")
    assert not missing.exists()


def test_directory_that_is_not_a_run(tmp_path):
    assert_one_line_error(run_cli("evaluate", tmp_path), "config.json", "missing")


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", ["corrupt", "JSON"]),
        ("[]", ["corrupt"]),
        ('{"model": {"latent_dim": "x"}}', ["invalid", "--latent-dim"]),
        ('{"model": {"colour": 1}}', ["invalid", "colour"]),
        ("", ["corrupt"]),
    ],
)
def test_corrupt_config(run_copy, text, words):
    (run_copy / ckpt.CONFIG_FILE).write_text(text)
    for command in ("evaluate", "sample", "info"):
        assert_one_line_error(run_cli(command, run_copy), "config.json", *words)
    assert_one_line_error(run_cli("train", "--resume", run_copy, "--steps", "40"), "config.json")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "header"])
@pytest.mark.parametrize("target", [ckpt.MODEL_FILE, ckpt.STATE_FILE])
def test_corrupt_weights(run_copy, damage, target):
    path = run_copy / target
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a header length pointing far beyond the file
        path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    if target == ckpt.MODEL_FILE:
        res = run_cli("sample", run_copy, "--out", run_copy / "s.png")
        assert not (run_copy / "s.png").exists()
    else:
        res = run_cli("train", "--resume", run_copy, "--steps", "40", "--no-progress")
    assert_one_line_error(res, target, "corrupt")
    after = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert after == before  # nothing rewritten by the failed command


def test_resume_to_a_step_already_reached(run_copy):
    """A resume that would not train must say so, not rewrite the config with fewer steps."""
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    res = run_cli("train", "--resume", run_copy, "--steps", "10", "--no-progress")
    assert_one_line_error(res, "already at step 20", "--steps")
    after = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert after == before


def test_resume_of_a_run_that_stopped_early(tmp_path):
    # lr 1e-30 leaves the weights unchanged: epoch 2 is no better than epoch 1, so it stops.
    run = tmp_path / "run"
    argv = [*SMALL[:2], "--batch-size", "64", "--lr", "1e-30", "--patience", "1"]
    res = run_cli(
        "train", *argv, "--epochs", "5", "--figures", "false", "--no-progress", "--out", run
    )
    assert res.code == 0, res.err
    assert ckpt.read_metrics(run)[-1]["epoch"] == 2
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = run_cli("train", "--resume", run, "--epochs", "10", "--no-progress")
    assert_one_line_error(res, "stopped early", "--patience")
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


@pytest.mark.parametrize("target", [ckpt.MODEL_FILE, ckpt.STATE_FILE])
def test_missing_weights_file(run_copy, target):
    (run_copy / target).unlink()
    if target == ckpt.MODEL_FILE:
        res = run_cli("evaluate", run_copy)
    else:
        res = run_cli("train", "--resume", run_copy, "--steps", "40", "--no-progress")
    assert_one_line_error(res, target, "missing")
    assert not (run_copy / target).exists()


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--num-workers", "-1", "--num-workers must be >= 0"),
        ("--memory-budget-mb", "-5", "--memory-budget-mb must be >= 0"),
        ("--image-size", "0", "--image-size must be"),
        ("--synthetic-size", "1", "--synthetic-size must be"),
    ],
)
def test_bad_data_setting(tmp_path, flag, value, words):
    out = tmp_path / "run"
    assert_one_line_error(run_cli("train", "--out", out, "--steps", "1", flag, value), words)
    assert not out.exists()


def test_garbage_npy_is_named_for_what_it_is(tmp_path):
    bad = tmp_path / "garbage.npy"
    bad.write_bytes(bytes(range(200)))
    res = run_cli("train", "--dataset", bad, "--steps", "1", "--out", tmp_path / "r")
    assert_one_line_error(res, "is not a NumPy .npy file")


def test_a_file_given_as_run_directory(run_dir):
    res = run_cli("evaluate", run_dir / "config.json")
    assert_one_line_error(res, "is a file; give the run directory")
