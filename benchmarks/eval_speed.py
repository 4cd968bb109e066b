"""Speed of the importance-sampled log p(x) evaluation, against per-example loops.

Measures, in one run on one machine:
  * aevb: ``aevb.evaluate`` (batched over examples, chunked over K);
  * ``per-example (pythae-style)``: the usual loop — one example at a time, x repeated,
    the encoder run on every copy, samples in chunks of 100, ``.item()`` per example
    (the shape of pythae's ``get_nll``);
  * ``per-example (tuned)``: one example at a time, encoder once, all K samples in chunks
    of 1000 rows — the best a per-example loop can do;
  * the dense-matmul peak: ``torch.mm`` at the decoder's shapes (rows = aevb's chunk).

FLOP counting per (example, sample): the matmuls run once per sample, 2 * sum(in * out)
(the decoder; for the two-layer model also q(z2|z1) and p(z1|z2)), plus the densities: 5
per data dimension for the Bernoulli log-probability (softplus counted as 3, multiply and
add) and 4 per latent dimension for each of log p(z) and log q(z|x). The encoder (once per
example) and the noise are not counted. The loops use the same model through the same
interface (posterior, prior, log_likelihood), one example at a time.

Usage:
    python benchmarks/eval_speed.py                      # 784-400-20, K=5000, 200 examples
    python benchmarks/eval_speed.py --arch burda --examples 1000 --json
    python benchmarks/eval_speed.py --arch hvae          # Burda et al.'s two stochastic layers
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aevb import RunConfig, build_model
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
SHARED = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/binarized_mnist/binarized_mnist_test.amat.gz"
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


def matmul_peak(rows: int, shapes: list[tuple[int, int]], device, repeats: int = 5) -> float:
    """FLOP/s of torch.mm alone at the per-sample layer shapes, ``rows`` rows at a time."""
    mats = [
        (torch.randn(rows, a, device=device), torch.randn(a, b, device=device)) for a, b in shapes
    ]
    flops = sum(2 * rows * a.shape[1] * b.shape[1] for a, b in mats)
    for a, b in mats:
        torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(10):
            for a, b in mats:
                torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t) / 10)
    return flops / best


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
def per_example_tuned(model: nn.Module, x: torch.Tensor, k: int, chunk: int = 1000) -> float:
    """One example at a time, encoder once, K samples in chunks of 1000 rows."""
    out = torch.empty(len(x))
    noise, p = model.latent.noise, model.prior()
    for i in range(len(x)):
        xi = x[i : i + 1]
        q = model.posterior(xi)
        lse = torch.tensor(-math.inf)
        for k0 in range(0, k, chunk):
            c = min(chunk, k - k0)
            lw = importance_terms(model, xi, q, p, noise.draw(c, 1, x.device)).log_w
            lse = torch.logaddexp(lse, torch.logsumexp(lw[:, 0], 0))
        out[i] = lse - math.log(k)
    return float(out.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="pytorch-example", choices=sorted(ARCHS))
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--examples", type=int, default=200, help="examples timed for aevb")
    p.add_argument("--ref-examples", type=int, default=20, help="examples timed for the loops")
    p.add_argument(
        "--chunk-size", type=int, default=None, help="default: aevb's (2048 CPU, 262144 GPU)"
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = RunConfig().replace(
        input_shape=(1, 28, 28), likelihood="bernoulli", **ARCHS[args.arch]
    )
    model = build_model(config).to(args.device).eval()
    x, source = load_data(max(args.examples, args.ref_examples))
    x = x.to(args.device)
    ds = Dataset(
        DatasetInfo("bench", (1, 28, 28), (0.0, 1.0), False, "bernoulli"),
        {"train": x[:1], "valid": x[:1], "test": x[: args.examples]},
    )
    fps = flops_per_sample(model)

    evaluate(
        model,
        ds,
        "test",
        k=min(args.k, 200),
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
    )
    res = evaluate(
        model, ds, "test", k=args.k, chunk_size=args.chunk_size, batch_size=args.batch_size
    )
    aevb_rate = res["examples_x_k_per_s"]

    xr = x[: args.ref_examples]
    rows = {}
    for name, fn in (
        ("per-example (pythae-style)", per_example_pythae_style),
        ("per-example (tuned)", per_example_tuned),
    ):
        fn(model, xr[:1], min(args.k, 500))
        _sync(args.device)
        t = time.perf_counter()
        fn(model, xr, args.k)
        _sync(args.device)
        rows[name] = len(xr) * args.k / (time.perf_counter() - t)

    from aevb.evaluate import default_chunk_size

    chunk = args.chunk_size or default_chunk_size(torch.device(args.device))
    rows_per_chunk = max(1, chunk // args.batch_size) * args.batch_size
    peak = matmul_peak(rows_per_chunk, per_sample_layers(model), args.device)
    out = {
        "arch": args.arch,
        "k": args.k,
        "examples": args.examples,
        "data": source,
        "device": str(args.device) if args.device == "cpu" else torch.cuda.get_device_name(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "aevb_examples_x_k_per_s": aevb_rate,
        "reference_examples_x_k_per_s": rows,
        "speedup": {name: aevb_rate / r for name, r in rows.items()},
        "flops_per_sample": fps,
        "aevb_gflops": aevb_rate * fps / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "fraction_of_matmul_peak": aevb_rate * fps / peak,
        "full_test_set_seconds_estimate": 10_000 * args.k / aevb_rate,
        "log_px_iw": res["log_px_iw"],
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"IW evaluation, {args.arch}, K={args.k}, {source}, {out['device']} ({out['machine']})")
    print()
    print("| method | examples x K per second | aevb speed-up |")
    print("| --- | ---: | ---: |")
    print(f"| aevb.evaluate | {aevb_rate:,.0f} | 1.00x |")
    for name, r in rows.items():
        print(f"| {name} | {r:,.0f} | {aevb_rate / r:.2f}x |")
    print()
    print(
        f"counted FLOPs per (example, sample): {fps:,}; aevb reaches {out['aevb_gflops']:.1f} GFLOP/s, "
        f"{100 * out['fraction_of_matmul_peak']:.0f}% of the torch.mm peak at the decoder's shapes "
        f"({out['matmul_peak_gflops']:.1f} GFLOP/s); the 10,000-image test set at this K would take "
        f"{out['full_test_set_seconds_estimate']:.0f} s."
    )


if __name__ == "__main__":
    main()
