"""Speed of the importance-sampled log p(x) evaluation, against per-example loops.

Measures, side by side in one run on one machine (ABBA order over ``--repeats``, medians):
  * aevb: ``aevb.evaluate`` (batched over examples, chunked over K; the likelihood
    prepared once per batch (and worker) by ``model.log_likelihood_fn``, fused with the decoder's last
    layer for a Bernoulli MLP; with several CPU threads, its chunks on worker threads of
    one thread each, ``--workers off`` for the chunks one after another);
  * ``per-example (pythae-style)``: the usual loop — one example at a time, x repeated,
    the encoder run on every copy, samples in chunks of 100, ``.item()`` per example
    (the shape of pythae's ``get_nll``);
  * ``per-example (tuned)``: one example at a time, encoder once, all K samples in chunks
    of 1000 rows through ``importance_terms`` and the model's ``log_likelihood`` — the
    best a per-example loop written against the model interface does;
  * ``per-example (tuned, fused likelihood)``: the same loop given aevb's prepared,
    fused likelihood (``model.log_likelihood_fn`` per example): what is left of aevb's
    advantage once a per-example loop uses the same kernels;
  * the dense-matmul bound: ``torch.mm`` alone at the decoder's shapes (rows = aevb's
    chunk), timed as one more side in the same ABBA rounds and summarised by the same
    median (on a shared machine a best-of-n bound against a median rate would understate
    the fraction; the same statistic on both sides does not); and oneDNN's linear alone,
    which aevb's CPU matmuls use. With several threads, each bound also runs as that many
    threads of one thread each, the matmuls split between them (as aevb's workers run).
    The peak is the fastest bound.

FLOP counting per (example, sample): the matmuls run once per sample, 2 * sum(in * out)
(the decoder; for the two-layer model also q(z2|z1) and p(z1|z2)), plus the densities: 5
per data dimension for the Bernoulli log-probability (softplus counted as 3, multiply and
add) and 4 per latent dimension for each of log p(z) and log q(z|x). The encoder (once per
example) and the noise are not counted. The loops use the same model through the same
interface (posterior, prior, log_likelihood), one example at a time.

Rates are given per wall second and per CPU-second of this process (all its threads): on
a machine shared with other jobs the wall-clock rates swing with the other load, the CPU
rates measure the work. The load average is printed with the numbers. Speed-ups and the
fraction of the matmul bound are medians over the rounds of the ratio of two sides timed
in the same round (the bound side does aevb's number of pairs, so the two are neighbours
of the same length): this machine's speed drifts by +-20% within minutes, which ratios of
neighbours cancel and separately taken medians do not.

Usage:
    python benchmarks/eval_speed.py                      # 784-400-20, K=5000, 500 examples
    python benchmarks/eval_speed.py --arch burda --threads 1 --json
    python benchmarks/eval_speed.py --arch hvae          # Burda et al.'s two stochastic layers
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import BINARIZED_MNIST  # noqa: E402  (benchmarks/_machine.py)

import aevb.native  # noqa: E402
import aevb.workspace  # noqa: E402
from aevb import RunConfig, build_model  # noqa: E402
from aevb.data import Dataset, DatasetInfo
from aevb.evaluate import evaluate
from aevb.objectives import importance_terms

ARCHS = {
    # name: config fields
    "pytorch-example": dict(hidden=(400,), latent_dim=20, activation="relu"),
    "burda": dict(hidden=(200, 200), latent_dim=50, activation="tanh"),
    "hvae": dict(
        model="hvae",
        hidden=(200, 200),
        latent_dims=(100, 50),
        hidden_top=(100, 100),
        activation="tanh",
    ),
}
BOUND = "torch.mm alone at the decoder's shapes (bound)"
BOUND_ONEDNN = "oneDNN's linear alone at the decoder's shapes (bound)"
SHARED = BINARIZED_MNIST / "binarized_mnist_test.amat.gz"


def bench_model(arch: str, device: str = "cpu") -> nn.Module:
    """The benchmark's model of ``arch`` (Bernoulli, 28 x 28, seeded weights), in eval mode."""
    torch.manual_seed(0)
    config = RunConfig().replace(input_shape=(1, 28, 28), likelihood="bernoulli", **ARCHS[arch])
    return build_model(config).to(device).eval()


def paired_arguments(doc: str, k: int, rounds: int, threads: int) -> argparse.Namespace:
    """The command line of the paired comparisons (``eval_fold.py``, ``eval_workers.py``,
    ``eval_native.py``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="burda")
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--k", type=int, default=k)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--threads", type=int, default=threads, help="0: PyTorch's default")
    return parser.parse_args()


def abba(run: Callable[[bool], float], rounds: int) -> tuple[dict[bool, list[float]], list[float]]:
    """``run(True)`` and ``run(False)`` (each returning seconds) alternately in ABBA order:
    ``({side: times}, sorted paired ratios False / True)`` for the paired comparisons."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for side in (True, False) if r % 2 == 0 else (False, True):
            times[side].append(run(side))
    ratios = sorted(b / a for a, b in zip(times[True], times[False], strict=True))
    return times, ratios


def print_pairs(
    args: argparse.Namespace,
    n: int,
    source: str,
    times: dict[bool, list[float]],
    ratios: list[float],
    names: tuple[str, str],
) -> None:
    """The two lines of a paired comparison: the set-up, and both sides' rates with the
    median of the paired ratios (``names``: the True side's, the False side's)."""
    pairs = n * args.k
    print(
        f"{args.arch}, {n} examples ({source}), K={args.k}, {args.rounds} ABBA rounds, "
        f"{torch.get_num_threads()} thread(s), torch {torch.__version__}"
    )
    print(
        f"examples x K / s: {names[0]} {pairs / statistics.median(times[True]):,.0f}, "
        f"{names[1]} {pairs / statistics.median(times[False]):,.0f}; speed-up of the "
        f"{names[0]} (median of paired ratios) {statistics.median(ratios):.3f}x "
        f"(range {ratios[0]:.3f}-{ratios[-1]:.3f})"
    )


def load_data(n: int) -> tuple[torch.Tensor, str]:
    if SHARED.exists():
        with gzip.open(SHARED, "rb") as f:
            arr = np.frombuffer(f.read(), dtype=np.uint8)
        bits = arr[(arr == ord("0")) | (arr == ord("1"))] - ord("0")
        x = torch.from_numpy(bits.reshape(-1, 784)[:n].astype(np.float32))
        return x.view(-1, 1, 28, 28), "binarized MNIST test"
    g = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.13), generator=g), "synthetic binary"


def per_sample_layers(model: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every Linear run once per sample: all but the encoder's (once per example)."""
    once = {id(m) for m in model.encoder.modules()}
    return [
        (m.in_features, m.out_features)
        for m in model.modules()
        if isinstance(m, nn.Linear) and id(m) not in once
    ]


def flops_per_sample(model: nn.Module, d: int = 784) -> int:
    mm = sum(2 * a * b for a, b in per_sample_layers(model))
    return mm + 5 * d + 2 * 4 * model.latent.numel


def matmul_bound(
    rows: int,
    shapes: list[tuple[int, int]],
    device,
    onednn: bool = False,
    streams: int = 1,
) -> Callable[[int], None]:
    """The dense-matmul bound as a side of the benchmark: ``run(n)`` puts ``n`` (example,
    sample) pairs through ``torch.mm`` alone (or, ``onednn``, oneDNN's linear, which aevb's
    evaluator calls on a CPU: ``aevb.workspace.onednn_linear``) at the per-sample layer
    shapes, ``rows`` rows at a time (the same matmuls as the decoder, nothing else), so that
    its rate is timed in the same ABBA rounds, and summarised by the same median, as the
    evaluators.

    ``streams`` > 1: the matmuls split between that many threads, each with its own
    matrices and PyTorch on one thread (as aevb's evaluator runs its chunks on a CPU with
    several threads, ``aevb.workspace.Workers``), rather than each matmul split between
    the threads by PyTorch: on some shapes the faster of the two.
    """
    from aevb.workspace import onednn_linear

    def make() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return [
            (
                torch.randn(rows, a, device=device),
                torch.randn(b, a, device=device),
                torch.empty(rows, b, device=device),
            )
            for a, b in shapes
        ]

    def one_stream(mats, chunks: int) -> None:
        with torch.inference_mode():
            for _ in range(chunks):
                for a, w, out in mats:
                    if onednn:
                        onednn_linear(a, w, None)
                    else:
                        torch.mm(a, w.t(), out=out)

    every = [make() for _ in range(streams)]
    if streams == 1:
        return lambda n: one_stream(every[0], math.ceil(n / rows))

    def run(n: int) -> None:
        chunks = math.ceil(n / rows)
        share = [chunks // streams + (i < chunks % streams) for i in range(streams)]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(
                streams, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                list(pool.map(one_stream, every, share))
        finally:
            torch.set_num_threads(threads)

    return run


def _short(bound: str) -> str:
    """A bound's name without "alone at the decoder's shapes" and "(bound)"."""
    return bound.replace(" alone at the decoder's shapes", "").replace(" (bound)", "")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def per_example_pythae_style(model: nn.Module, x: torch.Tensor, k: int, chunk: int = 100) -> float:
    """One example at a time, x repeated ``chunk`` times and re-encoded, .item() per example."""
    out = []
    noise = model.latent.noise
    for i in range(len(x)):
        xi = x[i : i + 1]
        log_w = []
        for _ in range(math.ceil(k / chunk)):
            x_rep = torch.cat(chunk * [xi])
            q, p = model.posterior(x_rep), model.prior()
            z, log_q = q.sample_and_log_prob(noise.draw(1, chunk, x.device))
            probs = torch.sigmoid(model.decode(z[0])[:, 0])
            log_px_z = -F.binary_cross_entropy(probs, x_rep, reduction="none").flatten(1).sum(-1)
            log_w.append(log_px_z + p.log_prob(z[0]) - log_q[0])
        lw = torch.cat(log_w)[:k]
        out.append((torch.logsumexp(lw, 0) - math.log(k)).item())
    return float(np.mean(out))


@torch.no_grad()
def per_example_tuned(
    model: nn.Module, x: torch.Tensor, k: int, chunk: int = 1000, fused: bool = False
) -> float:
    """One example at a time, encoder once, K samples in chunks of 1000 rows.

    ``fused``: hand ``importance_terms`` the model's prepared likelihood (aevb's kernels).
    """
    out = torch.empty(len(x))
    noise, p = model.latent.noise, model.prior()
    for i in range(len(x)):
        xi = x[i : i + 1]
        q = model.posterior(xi)
        ll = model.log_likelihood_fn(xi) if fused else None
        lse = torch.tensor(-math.inf)
        for k0 in range(0, k, chunk):
            c = min(chunk, k - k0)
            eps = noise.draw(c, 1, x.device)
            lw = importance_terms(model, xi, q, p, eps, log_likelihood=ll).log_w
            lse = torch.logaddexp(lse, torch.logsumexp(lw[:, 0], 0))
        out[i] = lse - math.log(k)
    return float(out.mean())


def timed(fn: Callable[[], object], device) -> tuple[float, float]:
    """(wall seconds, CPU-seconds of this process) of one call."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="pytorch-example", choices=sorted(ARCHS))
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--examples", type=int, default=500, help="examples timed for aevb")
    p.add_argument("--ref-examples", type=int, default=20, help="examples timed for the loops")
    p.add_argument(
        "--chunk-size", type=int, default=None, help="default: aevb's (4096 CPU, 262144 GPU)"
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3, help="ABBA-ordered repeats (medians)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument(
        "--matmul",
        default="onednn",
        choices=["onednn", "mkl"],
        help="aevb's CPU float32 matmuls: oneDNN's linear where it applies (aevb's default), "
        "or torch.mm (MKL) only",
    )
    p.add_argument(
        "--workers",
        default="on",
        choices=["on", "off"],
        help="aevb's chunks on worker threads of one thread each (aevb's default on a CPU "
        "with several threads), or one after another, each operation on all threads",
    )
    p.add_argument(
        "--native",
        default="on",
        choices=["on", "off"],
        help="aevb's native Bernoulli kernel where it loads (aevb's default), or PyTorch's "
        "operators only",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    aevb.workspace.ONEDNN = args.matmul == "onednn"
    aevb.workspace.WORKERS = args.workers == "on"
    aevb.native.ENABLED = args.native == "on"
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = bench_model(args.arch, args.device)
    x, source = load_data(max(args.examples, args.ref_examples))
    x = x.to(args.device)
    ds = Dataset(
        DatasetInfo("bench", (1, 28, 28), (0.0, 1.0), False, "bernoulli"),
        {"train": x[:1], "valid": x[:1], "test": x[: args.examples]},
    )
    fps = flops_per_sample(model)
    xr = x[: args.ref_examples]
    results: dict[str, dict] = {}

    def run_aevb() -> None:
        kw = dict(chunk_size=args.chunk_size, batch_size=args.batch_size)
        results["aevb"] = evaluate(model, ds, "test", k=args.k, **kw)

    sides: dict[str, tuple[Callable[[], object], float]] = {
        "aevb.evaluate": (run_aevb, args.examples),
        "per-example (pythae-style)": (
            lambda: per_example_pythae_style(model, xr, args.k),
            len(xr),
        ),
        "per-example (tuned)": (lambda: per_example_tuned(model, xr, args.k), len(xr)),
        "per-example (tuned, fused likelihood)": (
            lambda: per_example_tuned(model, xr, args.k, fused=True),
            len(xr),
        ),
    }
    from aevb.evaluate import default_chunk_size

    chunk = args.chunk_size or default_chunk_size(torch.device(args.device))
    rows_per_chunk = max(1, chunk // args.batch_size) * args.batch_size
    shapes = per_sample_layers(model)
    bound = matmul_bound(rows_per_chunk, shapes, args.device)
    # aevb's work per round, in whole chunks
    bound_pairs = rows_per_chunk * max(1, round(args.examples * args.k / rows_per_chunk))
    sides[BOUND] = (lambda: bound(bound_pairs), bound_pairs / args.k)
    bounds = [BOUND]
    threads = torch.get_num_threads()
    cpu_device = torch.device(args.device).type == "cpu"
    variants = [(BOUND, False, 1)]
    if aevb.workspace.ONEDNN and cpu_device and aevb.workspace._onednn_works():
        variants.append((BOUND_ONEDNN, True, 1))
    if cpu_device and threads > 1:  # the matmuls split between threads of their own
        variants += [
            (name.replace(" (bound)", f", {threads} threads of one each (bound)"), od, threads)
            for name, od, _ in variants
        ]
    for name, od, streams in variants[1:]:
        run_bound = matmul_bound(rows_per_chunk, shapes, args.device, onednn=od, streams=streams)
        sides[name] = (lambda run_bound=run_bound: run_bound(bound_pairs), bound_pairs / args.k)
        bounds.append(name)
        run_bound(rows_per_chunk * threads)  # warm-up
    # Warm-up: lazy initialisation, allocator, thread pool.
    bound(rows_per_chunk)
    evaluate(model, ds, "test", k=min(args.k, 64), chunk_size=args.chunk_size)
    per_example_pythae_style(model, xr[:1], min(args.k, 200))
    per_example_tuned(model, xr[:1], min(args.k, 1000))
    per_example_tuned(model, xr[:1], min(args.k, 1000), fused=True)
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))  # ABBA: cancels drift
        for name in order:
            fn, n = sides[name]
            w, c = timed(fn, args.device)
            wall[name].append(n * args.k / w)
            cpu[name].append(n * args.k / c)
    rate = {name: statistics.median(v) for name, v in wall.items()}
    rate_cpu = {name: statistics.median(v) for name, v in cpu.items()}

    def paired(rates: dict[str, list[float]], name: str) -> float:
        """Median over rounds of aevb's rate / ``name``'s rate in the same round: on a
        machine whose speed drifts, the ratio of neighbours is steadier than that of
        medians taken apart."""
        a = rates["aevb.evaluate"]
        return statistics.median(x / y for x, y in zip(a, rates[name], strict=True))

    speedup = {name: paired(wall, name) for name in sides}
    speedup_cpu = {name: paired(cpu, name) for name in sides}
    mm_flops = sum(2 * a * b for a, b in shapes)
    # The peak is the faster of the bounds (torch.mm, and oneDNN's linear where aevb uses it)
    best = max(bounds, key=lambda name: rate[name])
    bound_rates = {name: rate[name] * mm_flops / 1e9 for name in bounds}
    bound_fractions = {name: speedup[name] * fps / mm_flops for name in bounds}
    peak, peak_cpu = rate[best] * mm_flops, rate_cpu[best] * mm_flops
    fraction = speedup[best] * fps / mm_flops
    fraction_cpu = speedup_cpu[best] * fps / mm_flops
    for name in bounds:
        rate.pop(name), rate_cpu.pop(name), speedup.pop(name), speedup_cpu.pop(name)
        del sides[name]
    aevb_rate, aevb_cpu = rate["aevb.evaluate"], rate_cpu["aevb.evaluate"]
    tuned, tuned_cpu = speedup["per-example (tuned)"], speedup_cpu["per-example (tuned)"]
    out = {
        "arch": args.arch,
        "k": args.k,
        "examples": args.examples,
        "ref_examples": args.ref_examples,
        "repeats": args.repeats,
        "chunk_size": chunk,
        "batch_size": args.batch_size,
        "data": source,
        "device": str(args.device) if args.device == "cpu" else torch.cuda.get_device_name(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "load_average": [round(v, 2) for v in load_before],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "examples_x_k_per_s": rate,
        "examples_x_k_per_cpu_s": rate_cpu,
        "examples_x_k_per_s_all": wall,
        "examples_x_k_per_cpu_s_all": cpu,
        "speedup": speedup,
        "speedup_cpu_time": speedup_cpu,
        "flops_per_sample": fps,
        "aevb_gflops": aevb_rate * fps / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "matmul_peak_from": best,
        "matmul_bounds_gflops": bound_rates,
        "fraction_of_each_bound": bound_fractions,
        "matmul": args.matmul,
        "workers": args.workers,
        "native": aevb.native.status(),
        "matmul_peak_gflops_per_cpu_s": peak_cpu / 1e9,
        "fraction_of_matmul_peak": fraction,
        "fraction_of_matmul_peak_cpu_time": fraction_cpu,
        "fraction_of_matmul_peak_medians": aevb_rate * fps / peak,
        "full_test_set_seconds_estimate": 10_000 * args.k / aevb_rate,
        "full_test_set_matmul_only_seconds": 10_000 * args.k * mm_flops / peak,
        "full_test_set_cpu_seconds_estimate": 10_000 * args.k / aevb_cpu,
        "full_test_set_matmul_only_cpu_seconds": 10_000 * args.k * mm_flops / peak_cpu,
        "log_px_iw": results["aevb"]["log_px_iw"],
        "command": "python " + " ".join(sys.argv),
    }
    out["targets"] = {
        "fraction_of_matmul_peak >= 0.75": out["fraction_of_matmul_peak"] >= 0.75,
        "fraction_of_matmul_peak_cpu_time >= 0.75": out["fraction_of_matmul_peak_cpu_time"] >= 0.75,
        "speedup vs per-example (tuned) >= 1.5": tuned >= 1.5,
        "speedup_cpu_time vs per-example (tuned) >= 1.5": tuned_cpu >= 1.5,
    }
    if torch.device(args.device).type == "cuda":  # the GPU target (H100-class)
        out["targets"]["10,000 test images at K=5000 in < 10 s (GPU)"] = (
            args.k == 5000 and out["full_test_set_seconds_estimate"] < 10
        )
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"IW evaluation, {args.arch}, K={args.k}, {source}, {out['device']} ({out['machine']}), "
        f"torch {torch.__version__}; load average {out['load_average']} -> "
        f"{out['load_average_end']}"
    )
    print(f"median of {args.repeats} ABBA repeats; command: {out['command']}")
    print(f"aevb's native kernels: {out['native']}")
    print()
    print("| method | examples x K / s | speed-up | examples x K / CPU-s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in sides:
        print(
            f"| {name} | {rate[name]:,.0f} | {speedup[name]:.2f}x "
            f"| {rate_cpu[name]:,.0f} | {speedup_cpu[name]:.2f}x |"
        )
    for name, gflops in bound_rates.items():
        print(f"| {name} | {gflops * 1e9 / mm_flops:,.0f} | | | |")
    print()
    print(
        f"counted FLOPs per (example, sample): {fps:,}; aevb reaches {out['aevb_gflops']:.1f} "
        f"GFLOP/s, {100 * out['fraction_of_matmul_peak']:.0f}% of the matmul peak at the "
        f"decoder's shapes (the faster bound, {_short(best)}; median of the "
        f"rounds' ratios; "
        f"{100 * out['fraction_of_matmul_peak_medians']:.0f}% as a ratio of the medians, "
        f"{out['matmul_peak_gflops']:.1f} GFLOP/s; per CPU-second "
        f"{100 * out['fraction_of_matmul_peak_cpu_time']:.0f}% of "
        f"{out['matmul_peak_gflops_per_cpu_s']:.1f}). The 10,000-image test set at this K: "
        f"{out['full_test_set_seconds_estimate']:.0f} s (matmul-only limit "
        f"{out['full_test_set_matmul_only_seconds']:.0f} s); in CPU-seconds "
        f"{out['full_test_set_cpu_seconds_estimate']:.0f} (limit "
        f"{out['full_test_set_matmul_only_cpu_seconds']:.0f})."
    )
    if len(bounds) > 1:
        print(
            "fraction of each bound (median of the rounds' ratios): "
            + ", ".join(f"{_short(n)} {100 * f:.0f}%" for n, f in bound_fractions.items())
        )
    print()
    for target, met in out["targets"].items():
        print(f"target {target}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
