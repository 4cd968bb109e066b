"""The promises under faults (docs/promises.md), each pinned by a regression test.

Nothing already on disk is lost; one process trains a run at a time; a diverging run keeps
its last good checkpoint; a failed command leaves the run's config as it was; Ctrl-C and
SIGTERM save exactly the state after the last completed step; every user error is one line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SMALL, assert_one_line_error, run_cli, state_dicts_equal

from aevb import checkpoint as ckpt
from aevb.rundir import LOCK_FILE, RunLock

QUICK = ["--hidden", "32", "--batch-size", "64", "--figures", "false", "--no-progress"]
STEPS_PER_EPOCH = 22  # digits: 1,437 training examples at batch 64


def _train(out: Path, *args: str) -> None:
    res = run_cli("train", *QUICK, *args, "--out", out)
    assert res.code == 0, res.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to prove nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    state, _ = ckpt.load_tensors(run / ckpt.STATE_FILE)
    return state


# --- 1. --out writes only into new folders or unfinished runs of the same config ---------
def test_out_refuses_a_folder_that_is_not_an_aevb_run(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "config.json").write_text('{"my": 1}')
    (d / "notes.txt").write_text("mine")
    before = _snapshot(d)
    res = run_cli("train", *QUICK, "--steps", "5", "--out", d)
    assert_one_line_error(res, "not empty", "no aevb run", "--out")
    assert _snapshot(d) == before


def test_out_refuses_a_finished_run_even_without_its_training_state(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "5")
    (run / ckpt.STATE_FILE).unlink()
    before = _snapshot(run)
    res = run_cli("train", *QUICK, "--steps", "5", "--out", run)
    assert_one_line_error(res, "finished run", "--resume")
    assert _snapshot(run) == before


def test_out_empty_or_current_directory_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for out in ("", "."):
        res = run_cli("train", *QUICK, "--steps", "5", "--out", out)
        assert_one_line_error(res, "--out")
    assert list(tmp_path.iterdir()) == []


def test_out_continues_an_unfinished_run_of_the_same_config_only(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "30")
    straight = _tensors(run)
    # An unfinished run of the same command (here: its model file removed as if cut short
    # after the last checkpoint) is continued in place, to the same state.
    (run / ckpt.MODEL_FILE).unlink()
    res = run_cli("train", *QUICK, "--steps", "30", "--out", run)
    assert res.code == 0, res.err
    assert "continuing the unfinished run" in res.err
    assert state_dicts_equal(_tensors(run), straight)
    # Another config: refused, nothing touched.
    (run / ckpt.MODEL_FILE).unlink()
    before = _snapshot(run)
    res = run_cli("train", *QUICK, "--steps", "30", "--lr", "0.01", "--out", run)
    assert_one_line_error(res, "another configuration", "--resume")
    assert _snapshot(run) == before


def test_a_failed_train_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new"
    res = run_cli(
        "train", *QUICK, "--steps", "5", "--dataset", tmp_path / "missing.npy", "--out", out
    )
    assert_one_line_error(res, "missing.npy")
    assert not out.exists()


# --- 2. one process per run ----------------------------------------------------------------
def test_a_run_in_use_is_refused_at_once(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "5")
    before = _snapshot(run)
    with RunLock(run):  # another process would hold it the same way (flock)
        res = run_cli("train", "--resume", run, "--steps", "10", "--no-progress")
        assert_one_line_error(res, "in use by process", str(os.getpid()))
        res = run_cli("train", *QUICK, "--steps", "5", "--out", run)
        assert res.code != 0
    assert {k: v for k, v in _snapshot(run).items() if k != LOCK_FILE} == before


def test_a_second_training_process_fails_while_the_first_holds_the_run(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "aevb", "train", *QUICK, "--steps", "200000", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_for(lambda: (run / ckpt.METRICS_FILE).is_file(), first)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().count("\n") == 0
        assert f"in use by process {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert first.returncode == 130  # the first run stopped cleanly, its state saved
    assert (run / ckpt.STATE_FILE).is_file() and not (run / LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "5")
    (run / LOCK_FILE).write_text("999999 elsewhere 0\n")  # left by a killed process: not held
    res = run_cli("train", "--resume", run, "--steps", "10", "--no-progress")
    assert res.code == 0, res.err
    assert not (run / LOCK_FILE).exists()


# --- 3. divergence: skipped steps, the last good checkpoint survives ---------------------------
def test_divergence_keeps_the_last_good_checkpoint_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "40")
    good = _tensors(run)
    config_before = (run / ckpt.CONFIG_FILE).read_bytes()
    res = run_cli(
        "train",
        "--resume",
        run,
        "--steps",
        "80",
        "--lr",
        "1e3",
        "--checkpoint-every",
        "2",
        "--no-progress",
    )
    err = assert_one_line_error(res, "diverged", "--lr", "last good checkpoint")
    assert "data" not in err.split("diverged", 1)[1].split(";")[1]  # blames the lr, not the data
    state = _tensors(run)
    assert all(torch.isfinite(v).all() for k, v in state.items() if v.is_floating_point())
    assert state_dicts_equal(state, good)  # nothing written after the weights went bad
    assert (run / ckpt.CONFIG_FILE).read_bytes() == config_before  # lr not recorded
    res = run_cli("train", "--resume", run, "--steps", "60", "--no-progress")
    assert res.code == 0, res.err


def test_a_skipped_step_leaves_weights_and_adam_untouched():
    from aevb.train import _optimizer_step

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    _optimizer_step(opt, torch.tensor(False))
    after_one = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()})
    p.grad = torch.full((3,), float("nan"))
    _optimizer_step(opt, torch.tensor(True))
    assert torch.equal(p.detach(), after_one[0])
    for k, v in opt.state[p].items():
        assert torch.equal(v, after_one[1][k]), k  # the step count too


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    """A batch whose loss is NaN is skipped (counted in metrics.jsonl); training goes on."""
    import aevb.objectives as objectives

    calls = {"n": 0}
    real = objectives.ELBO.__call__

    def sometimes_nan(self, model, x, y, eps, hyper, train=True):
        out = real(self, model, x, y, eps, hyper, train)
        calls["n"] += 1
        if train and calls["n"] in (3, 7):
            return type(out)(out.loss * float("nan"), *list(out.__dict__.values())[1:])
        return out

    monkeypatch.setattr(objectives.ELBO, "__call__", sometimes_nan)
    run = tmp_path / "run"
    _train(run, "--steps", "22")
    last = ckpt.read_metrics(run)[-1]
    assert last["skipped_steps"] == 2 and np.isfinite(last["train_neg_elbo"])


def test_data_that_overflows_is_blamed_not_the_learning_rate(tmp_path):
    x = np.random.default_rng(0).normal(size=(300, 5)).astype(np.float32)
    x[:, 0] = 1e30
    path = tmp_path / "big.npy"
    np.save(path, x)
    res = run_cli("train", *QUICK, "--steps", "5", "--dataset", path, "--out", tmp_path / "o")
    err = assert_one_line_error(res, "1e+30", "rescale")
    assert "--lr" not in err
    res = run_cli("train", *QUICK, "--steps", "5", "--sigma", "inf", "--out", tmp_path / "o")
    assert_one_line_error(res, "--sigma", "finite")


# --- 4. a failing command does not rewrite config.json ----------------------------------------
def test_a_refused_resume_leaves_the_config_alone(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "10")  # mid-epoch
    before = _snapshot(run)
    res = run_cli("train", "--resume", run, "--steps", "50", "--batch-size", "32", "--no-progress")
    assert_one_line_error(res, "--batch-size", "epoch boundary")
    assert _snapshot(run) == before


def test_a_crashing_resume_leaves_the_config_alone(tmp_path, monkeypatch):
    import aevb.train  # noqa: F401  (the module, for monkeypatching)

    run = tmp_path / "run"
    _train(run, "--steps", "10")
    before = (run / ckpt.CONFIG_FILE).read_bytes()

    def crash(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(sys.modules["aevb.train"], "evaluate_objective", crash)
    with pytest.raises(RuntimeError):
        run_cli("train", "--resume", run, "--steps", "30", "--lr", "0.005", "--no-progress")
    assert (run / ckpt.CONFIG_FILE).read_bytes() == before


def test_the_new_settings_are_recorded_with_their_first_checkpoint(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "10")
    res = run_cli("train", "--resume", run, "--steps", "30", "--lr", "0.005", "--no-progress")
    assert res.code == 0, res.err
    assert ckpt.load_config(run).train.lr == 0.005


# --- 5. Ctrl-C and SIGTERM save exactly the state after the last completed step -----------------
def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_real_process_resumes_bit_exactly(tmp_path, sig):
    total = 1500
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    _train(straight, "--steps", str(total))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "aevb", "train", *QUICK, "--steps", "200000", "--out", str(cut)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: len(ckpt.read_metrics(cut)) >= 2, proc)  # well into training
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "interrupted at step" in err and "--resume" in err
    stopped = json.loads(ckpt.load_tensors(cut / ckpt.STATE_FILE)[1]["aevb"])["progress"]["step"]
    assert stopped < total
    res = run_cli("train", "--resume", cut, "--steps", str(total), "--no-progress")
    assert res.code == 0, res.err
    assert state_dicts_equal(_tensors(cut), _tensors(straight))


def test_ctrl_c_before_training_says_nothing_was_saved(tmp_path, monkeypatch):
    import aevb.train  # noqa: F401

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules["aevb.train"], "load_dataset", interrupted)
    out = tmp_path / "run"
    res = run_cli("train", *QUICK, "--steps", "5", "--out", out)
    assert res.code == 130
    assert res.err.strip() == "aevb train: interrupted"
    assert not out.exists()


def test_temporaries_of_a_killed_write_are_cleaned_up(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "10")
    leftover = run / ".training_state.safetensors.x1y2.tmp"
    leftover.write_bytes(b"half a checkpoint")
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / ".samples.png.tmp").write_bytes(b"half a picture")
    res = run_cli("train", "--resume", run, "--steps", "20", "--no-progress")
    assert res.code == 0, res.err
    assert not leftover.exists() and not (run / "figures" / ".samples.png.tmp").exists()


def test_outputs_are_checked_before_the_work(run_dir, tmp_path, monkeypatch):
    some_dir = tmp_path / "somedir"
    some_dir.mkdir()
    res = run_cli("sample", run_dir, "--out", some_dir)
    assert_one_line_error(res, "directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somedir"]
    import aevb.evaluate  # noqa: F401  (the module, for monkeypatching)

    def never(*a, **k):
        raise AssertionError("evaluated before checking the report path")

    monkeypatch.setattr(sys.modules["aevb.evaluate"], "evaluate", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = run_cli("evaluate", run_dir, "--report", blocker / "report.md")
    assert_one_line_error(res, "--report")


# --- 6. batch-size changes keep the step bookkeeping -------------------------------------------
def test_batch_size_changes_at_an_epoch_boundary(tmp_path):
    run = tmp_path / "run"
    _train(run, "--epochs", "1")
    assert ckpt.read_metrics(run)[-1]["step"] == STEPS_PER_EPOCH
    res = run_cli("train", "--resume", run, "--epochs", "2", "--batch-size", "128", "--no-progress")
    assert res.code == 0, res.err
    last = ckpt.read_metrics(run)[-1]
    assert last["epoch"] == 2 and last["step"] == STEPS_PER_EPOCH + 1437 // 128
    res = run_cli("train", "--resume", run, "--epochs", "3", "--batch-size", "512", "--no-progress")
    assert res.code == 0, res.err
    assert ckpt.read_metrics(run)[-1]["step"] == STEPS_PER_EPOCH + 11 + 2


# --- 7. every numeric setting is checked before anything is written ----------------------------
@pytest.mark.parametrize(
    "flags",
    [
        ("--batch-size", "-5"),
        ("--batch-size", "0"),
        ("--steps", "0"),
        ("--epochs", "-1"),
        ("--lr", "nan"),
        ("--eval-batch-size", "0"),
        ("--max-skipped-steps", "0"),
        ("--latent-dim", "-2"),
        ("--valid-fraction", "1.5"),
        ("--synthetic-size", "1"),
        ("--beta", "-1"),
        ("--free-bits", "inf"),
        ("--warmup-epochs", "-1"),
    ],
)
def test_numeric_settings_are_checked_up_front(tmp_path, flags):
    out = tmp_path / "out"
    res = run_cli("train", *QUICK, "--steps", "20", *flags, "--out", out)
    if flags[0] == "--steps":
        res = run_cli("train", *QUICK, *flags, "--out", out)
    assert_one_line_error(res, flags[0])
    assert not out.exists()
    cfg = tmp_path / "c.json"
    section, name = {
        "--latent-dim": ("vae", "latent_dim"),
        "--valid-fraction": ("data", "valid_fraction"),
        "--synthetic-size": ("data", "synthetic_size"),
        "--beta": ("objective", "beta"),
        "--free-bits": ("objective", "free_bits"),
    }.get(flags[0], ("train", flags[0][2:].replace("-", "_")))
    value = float(flags[1]) if "." in flags[1] or flags[1] in ("nan", "inf") else int(flags[1])
    cfg.write_text(
        json.dumps({section: {name: value}}).replace("NaN", '"nan"').replace("Infinity", '"inf"')
    )
    res = run_cli("train", "--config", cfg, "--no-progress", "--out", out)
    assert_one_line_error(res, flags[0])
    assert not out.exists()


# --- 8. boolean arrays are {0, 1} ----------------------------------------------------------------
def test_boolean_npy_is_zero_one(tmp_path):
    from aevb import DataConfig, load_dataset

    path = tmp_path / "b.npy"
    np.save(path, np.random.default_rng(0).random((200, 10)) < 0.5)
    ds = load_dataset(DataConfig(dataset=str(path)))
    assert set(ds.tensor("train").unique().tolist()) == {0.0, 1.0}
    assert "scale" not in ds.info.transform and ds.info.likelihood == "bernoulli"


# --- 10. unfinished and diverged runs say so ------------------------------------------------------
def test_unfinished_runs_say_how_to_continue(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "10")
    (run / ckpt.MODEL_FILE).unlink()
    res = run_cli("info", run)
    assert res.code == 0 and "unfinished at step 10" in res.out and "--resume" in res.out
    assert "[final metrics]" not in res.out
    for cmd in (["evaluate", run], ["sample", run], ["embed", run, "--out", tmp_path / "z.npy"]):
        res = run_cli(*cmd)
        assert_one_line_error(res, "unfinished at step 10", f"aevb train --resume {run}")


def test_info_json_is_strict_json(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "5")
    records = ckpt.read_metrics(run)
    records[-1]["valid_neg_elbo"] = float("nan")
    (run / ckpt.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    out = run_cli("info", run, "--json").out

    def refuse(name):
        raise ValueError(f"bare {name} in JSON")

    d = json.loads(out, parse_constant=refuse)
    assert d["last_metrics"]["valid_neg_elbo"] is None


def test_nan_weights_are_refused_by_every_command(tmp_path):
    run = tmp_path / "run"
    _train(run, "--steps", "5")
    weights, meta = ckpt.load_tensors(run / ckpt.MODEL_FILE)
    weights = {k: v * float("nan") for k, v in weights.items()}
    ckpt.save_tensors(run / ckpt.MODEL_FILE, weights, meta)
    for cmd in (["sample", run], ["evaluate", run], ["reconstruct", run]):
        assert_one_line_error(run_cli(*cmd), "NaN or inf", "diverged")


# --- 12. advice that fits the cause ---------------------------------------------------------------
def test_options_that_do_not_apply_are_refused(tmp_path, binary_npy):
    res = run_cli(
        "train",
        *QUICK,
        "--steps",
        "5",
        "--dataset",
        binary_npy,
        "--columns",
        "a",
        "--out",
        tmp_path / "o",
    )
    assert_one_line_error(res, "--columns", "does not apply")
    res = run_cli("train", *QUICK, "--steps", "5", "--image-size", "8", "--out", tmp_path / "o")
    assert_one_line_error(res, "--image-size", "digits")
    assert not (tmp_path / "o").exists()


def test_a_duplicate_csv_header_is_named_as_such(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,a\n" + "".join(f"{i},{i + 1},{i + 2}\n" for i in range(50)))
    res = run_cli("train", *QUICK, "--steps", "5", "--dataset", path, "--out", tmp_path / "o")
    err = assert_one_line_error(res, "header", "'a'", "twice")
    assert "--columns names" not in err


def test_a_changed_csv_is_warned_about_and_read_in_the_trained_units(tmp_path):
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200, 2))
    path.write_text("a,b\n" + "".join(f"{x},{y}\n" for x, y in rows))
    run = tmp_path / "run"
    _train(run, "--steps", "5", "--dataset", str(path))
    z0 = run_cli("embed", run, "--out", tmp_path / "z0.npy")
    assert z0.code == 0 and z0.err == ""
    path.write_text("a,b\n" + "".join(f"{x * 10 + 5},{y}\n" for x, y in rows))
    res = run_cli("embed", run, "--out", tmp_path / "z1.npy")
    assert res.code == 0
    assert "changed since training" in res.err and "'a'" not in res.err.replace("a,", "")


# --- 14. data that moved ------------------------------------------------------------------------
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "binarized_mnist"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_evaluate_finds_moved_data_with_data_dir_or_aevb_data(tmp_path, monkeypatch):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(SHARED, old / "binarized_mnist")
    run = tmp_path / "run"
    _train(
        run,
        "--steps",
        "2",
        "--batch-size",
        "100",
        "--dataset",
        "binarized-mnist",
        "--data-dir",
        str(old),
    )
    new = tmp_path / "new"
    old.rename(new)
    res = run_cli("evaluate", run, "--k", "2", "--json", "--data-dir", new)
    assert res.code == 0, res.err
    monkeypatch.setenv("AEVB_DATA", str(new))
    res = run_cli("evaluate", run, "--k", "2", "--json")
    assert res.code == 0, res.err


def test_unknown_options_list_every_valid_one():
    res = run_cli("evaluate", "run", "--bogus")
    err = assert_one_line_error(res, "--bogus", code=2)
    for flag in ("--device", "--dataset", "--data-dir", "--k", "--report"):
        assert flag in err
    res = run_cli("train", "--bogus")
    err = assert_one_line_error(res, "--bogus", code=2)
    for flag in ("--device", "--dataset", "--resume", "--latent-dim", "--k", "--out"):
        assert flag in err


def test_small_data_keeps_two_processes_equal_to_one(tmp_path):
    """The whole split as one batch: an odd size splits unevenly over 2 ranks, yet the loss
    is the global batch's mean (each rank's sum over the global size)."""
    pytest.importorskip("torch.distributed")
    x = np.random.default_rng(0).random((151, 6)).astype(np.float32)  # 121 training rows
    path = tmp_path / "small.npy"
    np.save(path, x)
    args = [
        *QUICK[:2],
        "--figures",
        "false",
        "--no-progress",
        "--steps",
        "4",
        "--dataset",
        str(path),
    ]
    one, two = tmp_path / "one", tmp_path / "two"
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
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_smoke_default_small_run_is_quiet(tmp_path):
    res = run_cli("train", *SMALL, "--figures", "false", "--out", tmp_path / "r")
    assert res.code == 0 and res.err == ""
