"""What the evaluator's worker threads give on a CPU with several threads, paired.

``aevb.workspace.Workers`` runs the chunks of ``importance_weighted`` on worker threads of
one PyTorch thread each; with ``aevb.workspace.WORKERS = False`` the chunks run one after
another, each operation split between the threads by PyTorch. This script runs the two
alternately in one process (ABBA), reports the median of the paired ratios of wall time
(the work is on several threads, so thread CPU time would not measure it; on this
project's shared host the wall clock drifts by +-20% within minutes, and neighbours'
ratios cancel it), and checks that the workers' estimate is bit-identical to a run on
one thread, and how far the threaded one is from it.

Usage:
    python benchmarks/eval_workers.py --arch burda --k 1000 --rounds 6
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import abba, bench_model, load_data, paired_arguments, print_pairs  # noqa: E402

from aevb import workspace  # noqa: E402
from aevb.estimators import importance_weighted  # noqa: E402


def main() -> None:
    args = paired_arguments(__doc__, k=1000, rounds=6, threads=0)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if threads < 2:
        raise SystemExit("the workers need at least two threads")
    model = bench_model(args.arch)
    x, source = load_data(args.examples)

    def run(workers: bool) -> tuple[float, torch.Tensor]:
        workspace.WORKERS = workers
        try:
            start = time.perf_counter()
            out = importance_weighted(model, x, args.k)["log_px_iw"]
            return time.perf_counter() - start, out
        finally:
            workspace.WORKERS = True

    with_workers, split = run(True)[1], run(False)[1]
    torch.set_num_threads(1)
    one = importance_weighted(model, x, args.k)["log_px_iw"]
    torch.set_num_threads(threads)
    times, ratios = abba(lambda workers: run(workers)[0], args.rounds)
    print_pairs(args, len(x), source, times, ratios, ("workers", "threaded operations"))
    identical = torch.equal(with_workers, one)
    print(f"workers bit-identical to one thread: {identical}")
    print(
        f"threaded operations against one thread: max |diff| {(split - one).abs().max():.2e} nats"
    )
    if not identical:
        raise SystemExit("the workers changed the numbers")


if __name__ == "__main__":
    main()
