"""Training throughput (examples per second) against the number of processes.

Each row trains the same run with ``aevb train --nproc N`` (torchrun + DistributedDataParallel,
gloo on CPU, nccl on CUDA) at the same global batch, twice: for ``--short`` and for
``--long`` steps. Throughput is ``(long - short) * batch / (wall_long - wall_short)``, with
the wall times that ``metrics.jsonl`` records inside ``train`` — so process start-up,
data loading and the last validation cancel out. The final valid neg-ELBO of each row
shows that N processes train the same model as one (equal up to float summation order).

On a CPU this shows correctness more than speed: the processes share the same cores, and
DDP's all-reduce is extra work. Multi-GPU scaling remains to be measured on a
multi-GPU machine.

Usage:
    python benchmarks/distributed_throughput.py                     # digits, 1 and 2 processes
    python benchmarks/distributed_throughput.py --nproc 1 2 4 --batch-size 512
    python benchmarks/distributed_throughput.py -- --dataset binarized-mnist  # extra train flags
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def train_wall_time(nproc: int, steps: int, args: argparse.Namespace, out: Path) -> dict:
    """Train ``steps`` steps in ``nproc`` processes; the final metrics record."""
    cmd = [
        sys.executable,
        "-m",
        "aevb",
        "train",
        "--nproc",
        str(nproc),
        "--steps",
        str(steps),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--figures",
        "false",
        "--no-progress",
        "--out",
        str(out),
        *args.train_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(nproc, args))}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def threads_per_process(nproc: int, args: argparse.Namespace) -> int:
    """``--threads``, else the cores shared out (what ``aevb train --nproc`` does)."""
    return args.threads or max(1, (os.cpu_count() or 1) // nproc)


def measure(nproc: int, args: argparse.Namespace, root: Path) -> dict:
    best = None
    for r in range(args.repeats):
        short = train_wall_time(nproc, args.short, args, root / f"n{nproc}-r{r}-short")
        long = train_wall_time(nproc, args.long, args, root / f"n{nproc}-r{r}-long")
        seconds = long["wall_time_s"] - short["wall_time_s"]
        rate = (args.long - args.short) * args.batch_size / seconds
        if best is None or rate > best["examples_per_s"]:
            best = {
                "nproc": nproc,
                "examples_per_s": rate,
                "seconds": seconds,
                "valid_neg_elbo": long["valid_neg_elbo"],
            }
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2], help="process counts")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--short", type=int, default=20, help="steps of the short run")
    p.add_argument("--long", type=int, default=80, help="steps of the long run")
    p.add_argument("--repeats", type=int, default=2, help="best of this many measurements")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OpenMP threads per process (default: CPU cores / processes)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    p.add_argument(
        "train_args",
        nargs="*",
        help="extra `aevb train` flags after `--` (default: digits, 1%% valid/test)",
    )
    args = p.parse_args()
    if not args.train_args:
        args.train_args = [
            "--dataset",
            "digits",
            "--valid-fraction",
            "0.01",
            "--test-fraction",
            "0.01",
        ]
    if args.long <= args.short:
        p.error("--long must exceed --short")

    with tempfile.TemporaryDirectory(prefix="aevb-ddp-bench-") as tmp:
        rows = [measure(n, args, Path(tmp)) for n in args.nproc]

    base = rows[0]["examples_per_s"]
    print(
        f"# aevb distributed throughput: global batch {args.batch_size}, "
        f"steps {args.short}..{args.long}, best of {args.repeats}"
    )
    print(
        f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(f"# command: python benchmarks/distributed_throughput.py {' '.join(sys.argv[1:])}")
    print()
    print(
        "| processes | threads each | batch per process | examples/s | speed-up "
        "| final valid neg-ELBO (nats) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['nproc']} | {threads_per_process(row['nproc'], args)} | "
            f"{args.batch_size // row['nproc']} | "
            f"{row['examples_per_s']:,.0f} | {row['examples_per_s'] / base:.2f}x | "
            f"{row['valid_neg_elbo']:.6f} |"
        )
    if args.json:
        for row in rows:
            print(json.dumps(row))


if __name__ == "__main__":
    main()
