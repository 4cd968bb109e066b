"""Vector-quantiser speed: aevb's ``VectorQuantizer`` against vector-quantize-pytorch's.

Measured 2026-11-30 on an AMD EPYC virtual machine with 2 cores shared with other jobs
(load average 3-4), torch 2.13.0+cpu, Python 3.11.7, vector-quantize-pytorch 1.32.0::

    PYTHONPATH=src python benchmarks/quantizer_speed.py --threads 1 --repeats 7

    codebook  implementation              examples/s  examples/CPU-s
    gradient  aevb                              6518            6762
    gradient  vector-quantize-pytorch           1162            1201
    gradient  ratio aevb / theirs               5.61            5.63
    ema       aevb                              6936            7054
    ema       vector-quantize-pytorch           1439            1552
    ema       ratio aevb / theirs               4.82            4.54

With 2 threads on the same busy machine (``--repeats 5``) every OpenMP barrier waits for a
core another job holds, and two runs gave ratios of 4.43 and 1.09 (gradient) and 1.85 and
2.91 (EMA) at 400-1600 examples/s: aevb was ahead in every run, by amounts that say more
about the other jobs than about the code. Where the time goes (one thread): the distance
matmul (~10 ms of ~19 ms per step) and its argmin; vector-quantize-pytorch computes full
distances and builds a ``[N, K]`` one-hot for the EMA sums.

What is timed, for each implementation, is one training step of the quantiser alone on a
fixed encoder output ``z_e`` (a leaf tensor that requires a gradient, standing in for the
encoder): the forward pass (nearest entries, straight-through output, codebook/commitment
loss and, with EMA, the moving-average codebook update), a stand-in decoder loss
``sum((quantized - target)^2)`` per example plus the quantiser's loss, the backward pass to
``z_e`` (and to the codebook), and, without EMA, an Adam step on the codebook.

Both are configured alike: K = 512 entries of D = 64, beta 0.25, EMA decay 0.99 with
Laplace smoothing (eps 1e-5), no dead-code restarts, plain straight-through gradient
(vector-quantize-pytorch: ``rotation_trick=False``; without EMA ``ema_update=False,
learnable_codebook=True``), image feature maps ``[B, D, H, W]`` in and out
(``accept_image_fmap=True``). Batches cycle through 4 fixed random ``z_e``.

Timing: ``--warmup`` steps, then ``--steps`` timed steps per repeat; the two
implementations alternate in ABBA order over ``--repeats`` repeats and the table gives
medians of examples per second of wall time and per CPU-second of this process (all its
threads; on a shared machine the CPU-time rate measures the work and moves less with the
other load). The ratio is ours / theirs (> 1: ours is faster).

Usage (install the comparison with ``pip install --no-deps vector-quantize-pytorch einops
einx torch-einops-utils loguru frozendict`` so that pip leaves torch alone, or the
``bench`` extra)::

    python benchmarks/quantizer_speed.py
    python benchmarks/quantizer_speed.py --threads 1 --repeats 7 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from aevb.quantizer import VectorQuantizer

K, D = 512, 64


def make_ours(ema: bool) -> tuple[torch.nn.Module, Callable]:
    vq = VectorQuantizer(num_codes=K, dim=D, beta=0.25, ema=ema, decay=0.99, eps=1e-5)

    def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = vq(z)
        return out.quantized, out.aux_loss.mean()

    return vq, forward


def make_theirs(ema: bool) -> tuple[torch.nn.Module, Callable]:
    from vector_quantize_pytorch import VectorQuantize

    kwargs = {} if ema else {"ema_update": False, "learnable_codebook": True}
    vq = VectorQuantize(
        dim=D,
        codebook_size=K,
        decay=0.99,
        eps=1e-5,
        commitment_weight=0.25,
        accept_image_fmap=True,
        rotation_trick=False,
        **kwargs,
    )

    def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, _, loss = vq(z)
        return quantized, loss

    return vq, forward


def make_step(make: Callable, ema: bool, batches: list[torch.Tensor]) -> Callable[[int], None]:
    torch.manual_seed(0)
    vq, forward = make(ema)
    vq.train()
    params = [p for p in vq.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3) if params and not ema else None
    targets = [torch.randn_like(z) for z in batches]

    def step(i: int) -> None:
        z, target = batches[i % len(batches)], targets[i % len(batches)]
        quantized, aux = forward(z)
        recon = (quantized - target).pow(2).flatten(1).sum(1).mean()
        (recon + aux).backward()
        z.grad = None
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def time_steps(step: Callable[[int], None], warmup: int, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``steps`` steps after ``warmup`` untimed ones."""
    for i in range(warmup):
        step(i)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(i)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--grid", type=int, default=8, help="H = W of the code grid")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, D, args.grid, args.grid)
    batches = [torch.randn(shape, generator=gen).requires_grad_(True) for _ in range(4)]
    impls = {"aevb": make_ours, "vector-quantize-pytorch": make_theirs}
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}, Python {platform.python_version()}",
        "shape": list(shape),
        "codebook": [K, D],
        "modes": {},
    }
    for ema in (False, True):
        steps = {name: make_step(make, ema, batches) for name, make in impls.items()}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in impls}
        order = list(impls)
        for r in range(args.repeats):
            for name in order if r % 2 == 0 else order[::-1]:  # ABBA
                times[name].append(time_steps(steps[name], args.warmup, args.steps))
        n = args.steps * args.batch
        mode = {}
        for name in impls:
            mode[name] = {
                "examples_per_s": statistics.median(n / w for w, _ in times[name]),
                "examples_per_cpu_s": statistics.median(n / c for _, c in times[name]),
            }
        ours, theirs = mode["aevb"], mode["vector-quantize-pytorch"]
        mode["ratio_wall"] = ours["examples_per_s"] / theirs["examples_per_s"]
        mode["ratio_cpu"] = ours["examples_per_cpu_s"] / theirs["examples_per_cpu_s"]
        results["modes"]["ema" if ema else "gradient"] = mode

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"# {results['machine']}; z_e {shape}, codebook {K} x {D}")
    print(f"{'codebook':<10}{'implementation':<26}{'examples/s':>12}{'examples/CPU-s':>16}")
    for mode_name, mode in results["modes"].items():
        for name in impls:
            row = mode[name]
            print(
                f"{mode_name:<10}{name:<26}{row['examples_per_s']:>12.0f}"
                f"{row['examples_per_cpu_s']:>16.0f}"
            )
        print(
            f"{mode_name:<10}{'ratio aevb / theirs':<26}{mode['ratio_wall']:>12.2f}"
            f"{mode['ratio_cpu']:>16.2f}"
        )
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
