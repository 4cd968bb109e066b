"""Resuming continues bit-for-bit: N steps straight == N/2 steps, then a resume to N.

The digits training split has 1,437 examples, so at --batch-size 64 an epoch is 22 steps.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import run_cli, state_dicts_equal

import aevb
from aevb import RunConfig
from aevb import checkpoint as ckpt

STEPS_PER_EPOCH = 22


def _config(**kw) -> RunConfig:
    base = dict(hidden=(32,), batch_size=64, figures=False, seed=3)
    base.update(kw)
    return RunConfig().replace(**base)


def _state(run: Path) -> dict:
    """Every tensor that determines the future of a run: weights, Adam moments, RNG."""
    tensors, _ = ckpt.load_tensors(run / ckpt.STATE_FILE)
    weights, _ = ckpt.load_tensors(run / ckpt.MODEL_FILE)
    return {**tensors, **{f"artifact.{k}": v for k, v in weights.items()}}


def _assert_same_run(a: Path, b: Path) -> None:
    sa, sb = _state(a), _state(b)
    assert state_dicts_equal(sa, sb), [k for k in sa if k in sb and not sa[k].equal(sb[k])][:5]
    ma, mb = ckpt.read_metrics(a)[-1], ckpt.read_metrics(b)[-1]
    assert ma["step"] == mb["step"] and ma["epoch"] == mb["epoch"]
    assert ma["valid_neg_elbo"] == mb["valid_neg_elbo"]  # same weights, same evaluation noise


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, Path]:
    """Reference runs trained without interruption, shared by the tests below."""
    root = tmp_path_factory.mktemp("straight")
    runs = {
        "steps30": (_config(steps=30), root / "s30"),
        "steps44": (_config(steps=2 * STEPS_PER_EPOCH), root / "s44"),
        "epochs2": (_config(epochs=2), root / "e2"),
    }
    for config, run in runs.values():
        aevb.train(config, run, progress=False)
    return {name: run for name, (_, run) in runs.items()}


def test_resume_mid_epoch_is_bit_exact(straight, tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(steps=15), run, progress=False)
    result = aevb.resume(run, steps=30, progress=False)
    assert result.metrics["step"] == 30
    _assert_same_run(run, straight["steps30"])
    steps = [r["step"] for r in ckpt.read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one record per evaluation


def test_resume_at_an_epoch_boundary_is_bit_exact(straight, tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(steps=STEPS_PER_EPOCH), run, progress=False)
    assert ckpt.read_metrics(run)[-1]["epoch"] == 1
    aevb.resume(run, steps=2 * STEPS_PER_EPOCH, progress=False)
    _assert_same_run(run, straight["steps44"])


def test_training_time_continues_across_a_resume(tmp_path):
    """metrics.jsonl's wall and CPU seconds count the whole training, not the last command:
    a resumed run's clocks continue from the checkpoint, and each is a positive sum."""
    run = tmp_path / "run"
    aevb.train(_config(epochs=1), run, progress=False)
    first = ckpt.read_metrics(run)[-1]
    aevb.resume(run, epochs=2, progress=False)
    second = ckpt.read_metrics(run)[-1]
    for key in ("wall_time_s", "cpu_time_s"):
        assert 0 < first[key] < second[key], key
    # the CPU clock is this process's: it can exceed the wall clock only with threads
    assert second["cpu_time_s"] <= second["wall_time_s"] * torch.get_num_threads() + 1.0


def test_resume_by_epochs_is_bit_exact(straight, tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(epochs=1), run, progress=False)
    aevb.resume(run, epochs=2, progress=False)
    assert ckpt.read_metrics(run)[-1]["step"] == 2 * STEPS_PER_EPOCH
    _assert_same_run(run, straight["epochs2"])
    # The straight epochs run and the straight steps run took the same 44 steps.
    _assert_same_run(straight["epochs2"], straight["steps44"])


def test_cli_resume_is_bit_exact_and_prints_the_run(straight, tmp_path):
    run = tmp_path / "run"
    first = run_cli(
        "train",
        "--hidden",
        "32",
        "--batch-size",
        "64",
        "--figures",
        "false",
        "--seed",
        "3",
        "--steps",
        "15",
        "--no-progress",
        "--out",
        run,
    )
    assert first.code == 0, first.err
    res = run_cli("train", "--resume", run, "--steps", "30", "--no-progress")
    assert res.code == 0, res.err
    assert res.last_line == str(run)
    _assert_same_run(run, straight["steps30"])


def test_cli_resume_by_epochs(straight, tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(epochs=1), run, progress=False)
    res = run_cli("train", "--resume", run, "--epochs", "2", "--no-progress")
    assert res.code == 0, res.err
    _assert_same_run(run, straight["epochs2"])


def test_two_resumes_in_a_row(straight, tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(steps=7), run, progress=False)
    aevb.resume(run, steps=19, progress=False)
    aevb.resume(run, steps=30, progress=False)
    _assert_same_run(run, straight["steps30"])


def test_resume_refuses_to_change_the_model(tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(steps=3), run, progress=False)
    res = run_cli("train", "--resume", run, "--latent-dim", "5", "--steps", "6")
    assert res.code != 0 and "--latent-dim" in res.err and "resum" in res.err
    assert ckpt.read_metrics(run)[-1]["step"] == 3


def test_train_refuses_to_overwrite_a_run(tmp_path):
    run = tmp_path / "run"
    aevb.train(_config(steps=3), run, progress=False)
    before = _state(run)
    res = run_cli("train", "--hidden", "32", "--steps", "3", "--out", run, "--no-progress")
    assert res.code != 0 and "--resume" in res.err
    assert state_dicts_equal(_state(run), before)


def test_early_stopping_keeps_the_best_weights_across_a_resume(tmp_path):
    """--patience: the best weights so far live in the training state, so a resumed run
    that never improves still saves the best epoch's weights, bit-exactly."""
    import aevb
    from aevb.checkpoint import load_best_weights, read_metrics
    from aevb.config import RunConfig

    run = tmp_path / "run"
    # Deterministic on the CPU: at lr 0.1 epoch 2 is the best of 3 (27.027 < 27.036).
    config = RunConfig().replace(
        hidden=(16,), batch_size=64, epochs=3, patience=50, figures=False, lr=0.1
    )
    aevb.train(config, run, progress=False)
    best = load_best_weights(run)
    records = read_metrics(run)
    best_epoch = min(records, key=lambda r: r["valid_neg_elbo"])["epoch"]
    assert best is not None and best_epoch < records[-1]["epoch"]  # best is not the last
    last = {
        k[6:]: v
        for k, v in ckpt.load_tensors(run / ckpt.STATE_FILE)[0].items()
        if k.startswith("model.")
    }
    assert not all(torch.equal(last[k], best[k]) for k in best)
    # A learning rate too small to move float32 weights: no later epoch can be better.
    result = aevb.resume(run, epochs=5, progress=False, lr=1e-30)
    records = read_metrics(run)
    assert len(records) == 5
    assert (
        min(r["valid_neg_elbo"] for r in records[3:]) >= records[best_epoch - 1]["valid_neg_elbo"]
    )
    saved = aevb.load(run).state_dict()
    assert all(torch.equal(saved[k], best[k]) for k in best)
    assert result.metrics["best_epoch"] == best_epoch
