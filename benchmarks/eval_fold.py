"""What folding tanh's scalings into the decoder's weights gives the evaluator, paired.

``aevb.models.networks.folded_layers`` computes each tanh layer as ``sigmoid((2W) h + 2b)
- 1/2`` with the next layer's weights doubled, where the unfolded path computes
``2 sigmoid(2 (W h + b)) - 1`` (three passes beside the sigmoid). This script runs
``importance_weighted`` with the fold and without it (``folded_layers`` replaced by a
function that declines every stack, so ``MLPDecoder.features`` takes its layer-by-layer
path) alternately in one process, checks that the two give the same numbers bit for bit,
and reports the median of the paired ratios of thread CPU time (on this project's shared
host the wall clock drifts by +-20% within minutes; neighbours' ratios cancel it).

Usage:
    python benchmarks/eval_fold.py --arch burda --k 128 --rounds 30
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import abba, bench_model, load_data, paired_arguments  # noqa: E402

from aevb.estimators import importance_weighted  # noqa: E402
from aevb.models import networks  # noqa: E402


def main() -> None:
    args = paired_arguments(__doc__, k=128, rounds=30, threads=1)
    torch.set_num_threads(args.threads)
    model = bench_model(args.arch)
    x, source = load_data(args.examples)
    x = x[: args.examples].reshape(-1, 1, 28, 28).float()
    fold = networks.folded_layers

    def run(folded: bool) -> tuple[float, dict[str, torch.Tensor]]:
        networks.folded_layers = fold if folded else (lambda layers: None)
        try:
            start = time.thread_time()
            out = importance_weighted(model, x, args.k)
            return time.thread_time() - start, out
        finally:
            networks.folded_layers = fold

    with_fold, without = run(True)[1], run(False)[1]
    identical = all(torch.equal(with_fold[key], without[key]) for key in with_fold)
    times, ratios = abba(lambda folded: run(folded)[0], args.rounds)
    print(
        f"{args.arch}, {len(x)} examples ({source}), K={args.k}, {args.rounds} ABBA rounds, "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    print(f"bit-identical with and without the fold: {identical}")
    print(
        f"thread CPU s per evaluation: folded {statistics.median(times[True]):.3f}, "
        f"unfolded {statistics.median(times[False]):.3f}; speed-up of the fold "
        f"(median of paired ratios) {statistics.median(ratios):.3f}x "
        f"(quartiles {ratios[len(ratios) // 4]:.3f}-{ratios[3 * len(ratios) // 4]:.3f})"
    )
    if not identical:
        raise SystemExit("the fold changed the numbers")


if __name__ == "__main__":
    main()
