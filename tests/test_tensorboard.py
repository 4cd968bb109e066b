"""``--tensorboard``: event files read back with TensorBoard's own reader hold every value of
metrics.jsonl at its step, the step loss, and the picture grids; tracking never changes
training; a resumed run appends and voids what a crash left after its checkpoint; only
rank 0 writes; without the package the flag is a one-line error naming the install.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_cli, state_dicts_equal

from aevb import checkpoint as ckpt
from aevb.tracking import TENSORBOARD_DIR, scalar_tags

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

BASE = ["--hidden", "32", "--batch-size", "64", "--latent-dim", "3", "--figures", "false"]
BASE += ["--no-progress", "--log-every", "5"]
STEPS = 30  # an epoch of digits is 22 steps of 64


def events(run: Path) -> EventAccumulator:
    ea = EventAccumulator(str(run / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    return ea.Reload()


def scalars(ea: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in ea.Scalars(tag)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tensorboard")
    out = {"plain": root / "plain", "tracked": root / "tracked"}
    for name, extra in (("plain", []), ("tracked", ["--tensorboard"])):
        res = run_cli("train", *BASE, *extra, "--steps", STEPS, "--out", out[name])
        assert res.code == 0, res.err
    return out


def test_every_metrics_value_is_a_scalar_at_its_step(runs):
    run = runs["tracked"]
    ea = events(run)
    records = ckpt.read_metrics(run)
    assert [r["step"] for r in records] == [22, 30]
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        for tag, value in scalar_tags(r, schedules=("lr", "beta")).items():
            expected.setdefault(tag, []).append((r["step"], value))
    tags = set(ea.Tags()["scalars"])
    for name in ("neg_elbo", "kl", "recon_nll"):  # neg-ELBO, rate, distortion
        assert {f"{name}/train", f"{name}/valid"} <= tags
    assert {"kl_per_dim/valid/0", "kl_per_dim/valid/2", "schedule/lr", "schedule/beta"} <= tags
    assert {"progress/epoch", "progress/skipped_steps", "progress/wall_time_s"} <= tags
    for tag, points in expected.items():
        got = scalars(ea, tag)
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, a), (_, b) in zip(got, points, strict=True):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-6), tag  # float32 in the file


def test_step_loss_every_log_every_steps_averages_to_the_epoch_loss(runs):
    ea = events(runs["tracked"])
    loss = scalars(ea, "steps/loss")
    assert [s for s, _ in loss] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in scalars(ea, "steps/neg_elbo")] == [5, 10, 15, 20, 25, 30]
    # Epoch 1 is steps 1-22: windows of 5, 5, 5, 5 steps (then 2 unlogged); epoch 2's windows
    # 23-25 and 26-30 cover it all, so their step-weighted mean is its train loss exactly.
    record = ckpt.read_metrics(runs["tracked"])[1]
    epoch2 = (3 * loss[4][1] + 5 * loss[5][1]) / 8
    assert epoch2 == pytest.approx(record["train_loss"], rel=1e-6)


def test_samples_and_reconstructions_are_image_grids_per_epoch(runs):
    ea = events(runs["tracked"])
    assert set(ea.Tags()["images"]) == {"samples", "reconstructions"}
    samples = ea.Images("samples")
    assert [e.step for e in samples] == [22, 30]
    assert (samples[0].width, samples[0].height) == (73, 73)  # 8 x 8 digits of 8 px, 1 px apart
    recon = ea.Images("reconstructions")
    assert [e.step for e in recon] == [22, 30] and recon[0].width == 73
    assert recon[0].height == 4 * 9 + 1  # 2 x (8 originals above their 8 reconstructions)


def test_tracking_does_not_change_training(runs):
    a, _ = ckpt.load_tensors(runs["plain"] / ckpt.MODEL_FILE)
    b, _ = ckpt.load_tensors(runs["tracked"] / ckpt.MODEL_FILE)
    assert state_dicts_equal(a, b)
    assert (
        ckpt.read_metrics(runs["plain"])[-1]["valid_neg_elbo"]
        == (ckpt.read_metrics(runs["tracked"])[-1]["valid_neg_elbo"])
    )
    assert not (runs["plain"] / TENSORBOARD_DIR).exists()


def test_resume_appends_and_voids_the_steps_after_the_checkpoint(runs, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    cut = tmp_path / "cut"
    assert run_cli("train", *BASE, "--tensorboard", "--steps", "13", "--out", cut).code == 0
    # What a crash after step 13 would have left: a validation value at step 20.
    time.sleep(1.1)  # event files are read in name order, which starts with the second
    with SummaryWriter(str(cut / TENSORBOARD_DIR)) as stale:
        stale.add_scalar("neg_elbo/valid", 999.0, 20)
    time.sleep(1.1)
    res = run_cli("train", "--resume", cut, "--steps", STEPS, "--no-progress")
    assert res.code == 0, res.err
    assert len(list((cut / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 3
    ea, straight = events(cut), events(runs["tracked"])
    valid = scalars(ea, "neg_elbo/valid")
    assert [s for s, _ in valid] == [13, 22, 30] and 999.0 not in [v for _, v in valid]
    assert valid[1:] == scalars(straight, "neg_elbo/valid")  # the resume is bit-exact
    assert [s for s, _ in scalars(ea, "steps/loss")] == [5, 10, 15, 20, 25, 30]


def test_a_fresh_start_clears_an_earlier_attempts_events(tmp_path):
    """A run that stopped before its first checkpoint starts again from step 0: the events
    of the earlier attempt go, as its metrics.jsonl does."""
    other, run = tmp_path / "other", tmp_path / "run"
    assert run_cli("train", *BASE, "--tensorboard", "--steps", "4", "--out", other).code == 0
    (stale,) = (other / TENSORBOARD_DIR).glob("events.out.tfevents.*")
    (run / TENSORBOARD_DIR).mkdir(parents=True)
    (run / TENSORBOARD_DIR / stale.name).write_bytes(stale.read_bytes())
    (run / ckpt.CONFIG_FILE).write_text((other / ckpt.CONFIG_FILE).read_text())  # no state
    res = run_cli("train", *BASE, "--tensorboard", "--steps", "4", "--out", run)
    assert res.code == 0, res.err
    (fresh,) = (run / TENSORBOARD_DIR).glob("events.out.tfevents.*")
    assert fresh.name != stale.name


def test_pictures_of_data_that_are_not_images_are_figures(tmp_path):
    run = tmp_path / "ring"
    args = ["--dataset", "ring", "--synthetic-size", "300", "--steps", "3", "--latent-dim", "2"]
    res = run_cli("train", *args, "--hidden", "8", "--no-progress", "--figures", "false",
                  "--tensorboard", "--out", run)  # fmt: skip
    assert res.code == 0, res.err
    ea = events(run)
    assert set(ea.Tags()["images"]) == {"samples", "reconstructions"}
    assert [e.step for e in ea.Images("samples")] == [1, 2, 3]  # an epoch is one step here


def test_without_the_package_the_flag_is_a_one_line_error(tmp_path, monkeypatch, runs):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    run = tmp_path / "run"
    res = run_cli("train", *BASE, "--tensorboard", "--steps", "2", "--out", run)
    assert_one_line_error(res, "--tensorboard", "pip install 'aevb[tensorboard]'", code=1)
    assert not run.exists()
    res = run_cli("train", "--resume", runs["plain"], "--tensorboard", "--steps", "40")
    assert_one_line_error(res, "pip install 'aevb[tensorboard]'", code=1)
    assert ckpt.read_metrics(runs["plain"])[-1]["step"] == STEPS  # nothing was touched
    res = run_cli("train", *BASE, "--steps", "2", "--out", run)  # off: nothing new needed
    assert res.code == 0, res.err


def test_only_rank_zero_writes(tmp_path):
    run = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "aevb", "train", "--nproc", "2", *BASE, "--steps", "6",
         "--tensorboard", "--out", str(run)],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (events_file,) = (run / TENSORBOARD_DIR).glob("events.out.tfevents.*")
    ea = events(run)
    assert [s for s, _ in scalars(ea, "neg_elbo/valid")] == [6]
    assert [s for s, _ in scalars(ea, "steps/loss")] == [5]
    assert torch.isfinite(torch.tensor(scalars(ea, "steps/loss")[0][1]))
