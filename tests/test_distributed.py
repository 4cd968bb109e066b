"""Scale-out on CPU with gloo and 2 processes: equal to one process, resumable, fails fast.

Runs go through the real launcher (``aevb train --nproc 2`` -> torchrun -> 2 workers) on
the built-in digits with a small model. With --valid-fraction 0.45 --test-fraction 0.5
the training split has 90 examples: 2 steps of 32 per epoch, so 6 steps cross two epoch
boundaries (a fresh permutation each epoch). The valid split (809 examples) is one
evaluation batch at the default --eval-batch-size 1000, so rank 1 scores nothing and
must still take part in the reduction.

Tolerance (measured, float32, summation order only): after 6 steps the 2-process weights
differ from 1 process's by at most 1.2e-7 and the logged metrics by 2e-7 relative; the
tests allow rtol 1e-5, atol 1e-6.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli, state_dicts_equal

import aevb
from aevb import checkpoint as ckpt
from aevb import distributed
from aevb.cli import main
from aevb.evaluate import evaluate, evaluate_elbo

SMALL = [
    "--dataset",
    "digits",
    "--hidden",
    "32",
    "--latent-dim",
    "2",
    "--figures",
    "false",
    "--batch-size",
    "32",
    "--valid-fraction",
    "0.45",
    "--test-fraction",
    "0.5",
    "--no-progress",
]
STEPS = 6
RTOL, ATOL = 1e-5, 1e-6

pytestmark = pytest.mark.timeout(120)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(run / ckpt.MODEL_FILE)[0]


def _metrics(run: Path) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("wall_time_s", "cpu_time_s")}
        for r in ckpt.read_metrics(run)
    ]


@pytest.fixture(scope="module")
def two_proc(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """6 steps in 2 processes, launched as a user would: ``python -m aevb train --nproc 2``."""
    run = tmp_path_factory.mktemp("ddp") / "two"
    cmd = [
        sys.executable,
        "-m",
        "aevb",
        "train",
        "--nproc",
        "2",
        *SMALL,
        "--steps",
        str(STEPS),
        "--out",
        str(run),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return run, proc


def test_two_processes_equal_one_process(two_proc, tmp_path):
    run2, proc = two_proc
    assert proc.stdout.strip().splitlines()[-1] == str(run2)  # rank 0 alone prints it
    assert proc.stdout.count(str(run2)) == 1
    run1 = tmp_path / "one"
    assert run_cli("train", *SMALL, "--steps", STEPS, "--out", run1).code == 0

    m1, m2 = _metrics(run1), _metrics(run2)
    assert [(r["step"], r["epoch"]) for r in m2] == [(2, 1), (4, 2), (6, 3)]
    assert [r.keys() for r in m1] == [r.keys() for r in m2]
    for r1, r2 in zip(m1, m2, strict=True):
        for key in r1:
            assert r2[key] == pytest.approx(r1[key], rel=RTOL, abs=ATOL), (r1["step"], key)
    w1, w2 = _weights(run1), _weights(run2)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=RTOL, atol=ATOL)
    # One config and one model for the run, whatever the world size: saved unwrapped.
    assert ckpt.load_config(run2) == ckpt.load_config(run1)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in w2)


def test_resume_under_two_processes_is_bit_exact(two_proc, tmp_path):
    run = tmp_path / "half"
    assert (
        main(["train", "--nproc", "2", *SMALL, "--steps", str(STEPS // 2), "--out", str(run)]) == 0
    )
    assert ckpt.read_metrics(run)[-1]["step"] == STEPS // 2  # mid-epoch
    assert (
        main(
            ["train", "--nproc", "2", "--resume", str(run), "--steps", str(STEPS), "--no-progress"]
        )
        == 0
    )
    straight = two_proc[0]
    assert state_dicts_equal(_weights(run), _weights(straight))
    state, straight_state = (ckpt.load_tensors(r / ckpt.STATE_FILE)[0] for r in (run, straight))
    assert state_dicts_equal(state, straight_state)  # Adam moments and RNG state too
    last, straight_last = ckpt.read_metrics(run)[-1], ckpt.read_metrics(straight)[-1]
    assert last["valid_neg_elbo"] == straight_last["valid_neg_elbo"]


def test_a_one_process_checkpoint_resumes_under_two(two_proc, tmp_path):
    run = tmp_path / "from-one"
    assert run_cli("train", *SMALL, "--steps", STEPS // 2, "--out", run).code == 0
    assert (
        main(
            ["train", "--nproc", "2", "--resume", str(run), "--steps", str(STEPS), "--no-progress"]
        )
        == 0
    )
    straight = _weights(two_proc[0])
    for k, v in _weights(run).items():
        torch.testing.assert_close(v, straight[k], rtol=RTOL, atol=ATOL)


# --- in-process workers (fork): sharded evaluation and timeouts ---------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_two_processes(target, *args) -> list:
    """Run ``target(rank, *args)`` in 2 forked processes joined by gloo; their return values."""
    port = _free_port()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()

    def worker(rank: int) -> None:
        torch.set_num_threads(1)  # OpenMP's pool does not survive fork
        os.environ.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        try:
            queue.put((rank, target(rank, *args)))
        except Exception as e:
            queue.put((rank, e))

    procs = [ctx.Process(target=worker, args=(r,)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    return [results[r] for r in range(2)]


BATCH_SIZES = (100, 1000)  # 898 test examples: 9 batches (5 + 4, the last short), or 1 (1 + 0)


def _evaluations(model, dataset, rank: int = 0, world_size: int = 1) -> dict:
    out = {}
    for bs in BATCH_SIZES:
        out[f"elbo{bs}"] = evaluate_elbo(
            model, dataset, "test", bs, seed=5, rank=rank, world_size=world_size
        )
        out[f"iw{bs}"] = evaluate(
            model, dataset, "test", k=16, batch_size=bs, seed=5, rank=rank, world_size=world_size
        )
    return out


def _evaluate_shard(rank: int, model, dataset) -> dict:
    with distributed.session(torch.device("cpu")) as ctx:
        assert (ctx.rank, ctx.world_size) == (rank, 2)
        return _evaluations(model, dataset, rank, 2)


def test_sharded_evaluation_equals_one_process(two_proc):
    model = aevb.load(two_proc[0])
    dataset = aevb.load_dataset(ckpt.load_config(two_proc[0]).data)
    n_test = dataset.size("test")
    assert n_test % BATCH_SIZES[0] != 0 and n_test < BATCH_SIZES[1]
    one = _evaluations(model, dataset)
    timings = ("seconds", "examples_x_k_per_s", "compute")  # not results
    for shard in _in_two_processes(_evaluate_shard, model, dataset):
        assert not isinstance(shard, Exception), shard
        for name, expected in one.items():
            got = shard[name]
            assert got["n_examples"] == expected["n_examples"] == n_test
            assert got.keys() == expected.keys()
            for key, value in expected.items():
                if isinstance(value, (float, list)) and key not in timings:
                    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), (name, key)
                elif key not in timings:
                    assert got[key] == value, (name, key)


def _stall(rank: int) -> str:
    os.environ[distributed.TIMEOUT_ENV] = "2"
    try:
        with distributed.session(torch.device("cpu")):
            if rank == 1:
                time.sleep(3)  # hung: never joins the collective below
                return "slept"
            distributed.all_reduce_sum(torch.ones(1))
    except aevb.AevbError as e:
        return str(e)
    return "no error"


def test_a_hung_rank_times_out_with_a_clear_message():
    t0 = time.perf_counter()
    message, _ = _in_two_processes(_stall)
    assert "lost contact with the other ranks" in message and "Timed out" in message
    assert "--resume" in message and distributed.TIMEOUT_ENV in message
    assert time.perf_counter() - t0 < 20


# --- a rank that dies ----------------------------------------------------------------------
DYING_WORKER = """
import os, signal, sys
from aevb.data.base import Dataset

_batches = Dataset.train_batches
count = 0

def train_batches(self, *args, **kwargs):
    global count
    for x in _batches(self, *args, **kwargs):
        count += 1
        if count == 4 and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        yield x

Dataset.train_batches = train_batches
from aevb.cli import main
raise SystemExit(main())
"""


def _workers_run(script: Path, monkeypatch) -> None:
    """``--nproc`` launches ``script`` (a patched aevb) in each worker instead of aevb."""
    launch_aevb = distributed.torchrun_command

    def launch_script(nproc: int, argv: list[str]) -> list[str]:
        cmd = launch_aevb(nproc, argv)
        i = cmd.index("aevb")
        return cmd[: i - 1] + [str(script)] + cmd[i + 1 :]

    monkeypatch.setattr(distributed, "torchrun_command", launch_script)


def test_a_dying_rank_stops_the_job_and_the_run_resumes(two_proc, tmp_path, monkeypatch, capfd):
    script = tmp_path / "dying_worker.py"
    script.write_text(DYING_WORKER)
    run = tmp_path / "killed"
    _workers_run(script, monkeypatch)
    t0 = time.perf_counter()
    code = main(["train", "--nproc", "2", *SMALL, "--steps", str(STEPS), "--out", str(run)])
    elapsed = time.perf_counter() - t0
    err = capfd.readouterr().err
    assert code != 0
    # promptly (~11 s here): a hang would wait out the collectives' 300 s timeout; the margin
    # is for a loaded CI machine (60 s failed once beside a benchmark)
    assert elapsed < 150
    assert "local_rank: 1" in err and "SIGKILL" in err  # torchrun names the rank that died
    last = err.strip().splitlines()[-1]
    assert last.startswith("aevb train: error: the 2-process run stopped")
    assert f"aevb train --resume {run} --nproc 2" in last
    # Killed during step 4: the checkpoint of step 2 (end of epoch 1) is the last one.
    assert ckpt.read_metrics(run)[-1]["step"] == 2

    monkeypatch.undo()
    assert (
        main(
            ["train", "--nproc", "2", "--resume", str(run), "--steps", str(STEPS), "--no-progress"]
        )
        == 0
    )
    assert state_dicts_equal(_weights(run), _weights(two_proc[0]))


# --- skipped steps ---------------------------------------------------------------------------
NAN_WORKER = """
import dataclasses, os, torch
import aevb.objectives as O

_elbo = O.ELBO.__call__
calls = 0

def elbo(self, model, x, y, eps, hyper, train=True):
    global calls
    out = _elbo(self, model, x, y, eps, hyper, train)
    if torch.is_grad_enabled():  # a training step, not validation
        calls += 1
        if calls in (2, 5) and os.environ.get("RANK", "0") == "0":  # one rank's loss only
            nan = torch.full_like(out.loss, float("nan"))
            out = dataclasses.replace(out, loss=out.loss + nan, neg_elbo=out.neg_elbo + nan)
    return out

O.ELBO.__call__ = elbo
from aevb.cli import main
raise SystemExit(main())
"""


def test_skipped_steps_are_counted_once_whatever_the_world_size(tmp_path, monkeypatch):
    # steps 2 and 5 get a NaN loss on rank 0: both ranks skip them, and the run counts 2
    # skipped steps, as one process does (it counted them once per rank)
    script = tmp_path / "nan_worker.py"
    script.write_text(NAN_WORKER)
    _workers_run(script, monkeypatch)
    run2, run1 = tmp_path / "two", tmp_path / "one"
    args = [*SMALL, "--steps", str(STEPS)]
    assert main(["train", "--nproc", "2", *args, "--out", str(run2)]) == 0
    one = subprocess.run(
        [sys.executable, str(script), "train", *args, "--out", str(run1)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0, one.stderr
    for run in (run1, run2):
        assert [r["skipped_steps"] for r in ckpt.read_metrics(run)] == [1, 1, 2]


# --- launcher checks that need no processes -------------------------------------------------
def test_global_batch_must_split_over_the_processes(tmp_path):
    res = run_cli("train", "--nproc", "2", *SMALL, "--batch-size", "33", "--out", tmp_path / "r")
    assert res.code != 0
    assert "--batch-size 33" in res.err and "multiple of 2" in res.err and "32 or 34" in res.err
    assert not (tmp_path / "r").exists()


def test_nproc_is_refused_inside_torchrun(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = run_cli("train", "--nproc", "2", *SMALL, "--out", tmp_path / "r")
    assert res.code != 0 and "drop it when launching with torchrun" in res.err


def test_one_process_has_no_process_group():
    with distributed.session(torch.device("cpu")) as ctx:
        assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
        assert not torch.distributed.is_initialized()
        assert distributed.on_main(lambda: 7) == 7 and distributed.broadcast("x") == "x"
    command = distributed.torchrun_command(2, ["train"])
    assert "--standalone" in command and command[-3:] == ["-m", "aevb", "train"]
