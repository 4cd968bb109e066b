"""What aevb's native Bernoulli kernel gives the evaluator, paired, and how far it moves it.

``aevb.native.bernoulli_rows`` (C compiled on first use) computes the Bernoulli
log-likelihood sums of the logits in one pass, where the PyTorch path makes several (the
sign multiply, the sigmoid, the block products and logs). This script runs
``importance_weighted`` with the kernel and without it (``aevb.native.ENABLED = False``)
alternately in one process (ABBA), reports the median of the paired ratios of wall time
(on this project's shared host the wall clock drifts by +-20% within minutes; neighbours'
ratios cancel it), how far the two estimates are apart, and whether the kernel's estimate
is bit-identical across chunk sizes.

Usage:
    python benchmarks/eval_native.py --arch burda --k 1000 --rounds 6
    python benchmarks/eval_native.py --arch pytorch-example --threads 1
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_speed import abba, bench_model, load_data, paired_arguments, print_pairs  # noqa: E402

from aevb import native  # noqa: E402
from aevb.estimators import importance_weighted  # noqa: E402


def main() -> None:
    args = paired_arguments(__doc__, k=1000, rounds=6, threads=0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"native kernels: {native.status()}")
    if native.library() is None:
        raise SystemExit("nothing to compare: the native kernels did not load")
    model = bench_model(args.arch)
    x, source = load_data(args.examples)

    def estimate(use: bool, chunk_size: int = 4096) -> tuple[float, torch.Tensor]:
        native.ENABLED = use
        try:
            start = time.perf_counter()
            out = importance_weighted(model, x, args.k, chunk_size=chunk_size)["log_px_iw"]
            return time.perf_counter() - start, out
        finally:
            native.ENABLED = True

    kernel, pytorch = estimate(True)[1], estimate(False)[1]
    other_chunks = estimate(True, chunk_size=1500)[1]
    times, ratios = abba(lambda use: estimate(use)[0], args.rounds)
    print_pairs(args, len(x), source, times, ratios, ("kernel", "PyTorch path"))
    diff = (kernel - pytorch).abs().max()
    print(f"kernel against the PyTorch path: max |diff| {diff:.2e} nats per example")
    identical = torch.equal(kernel, other_chunks)
    print(f"kernel bit-identical across chunk sizes (4096, 1500): {identical}")
    if not identical or diff > 1e-4:
        raise SystemExit("the kernel changed the numbers beyond what it may")


if __name__ == "__main__":
    main()
