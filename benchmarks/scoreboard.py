"""Scoreboard: train the standard VAEs on statically binarized MNIST, report test log p(x).

Models (both Bernoulli decoders, Gaussian encoders, Adam):
  * ``burda``: the one-stochastic-layer VAE of Burda et al. (2015), 784-200-200-50, tanh;
  * ``pytorch-example``: the PyTorch example's 784-400-20, ReLU.

Each is trained with ``aevb.train`` on the 50,000 training images (validation on the
official 10,000) and scored on the 10,000 test images with ``aevb.evaluate``: log p(x)
by importance sampling with K = 5000 (Burda et al.'s protocol), the negative ELBO,
active units, wall times, and the machine. Results are appended as JSON lines to
``--results`` and printed as a Markdown table with the published values beside them.

Usage (the data comes from --data-dir or is downloaded with checksums):
    python benchmarks/scoreboard.py --data-dir ../shared/data --epochs 30
    python benchmarks/scoreboard.py --data-dir ../shared/data --epochs 3280 --device cuda   # paper length
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import aevb
from aevb.config import DataConfig, ModelConfig, RunConfig, TrainConfig

MODELS = {
    "burda": dict(hidden=(200, 200), latent_dim=50, activation="tanh"),
    "pytorch-example": dict(hidden=(400,), latent_dim=20, activation="relu"),
}
PUBLISHED = [
    ("VAE, 1 stochastic layer (Burda et al. 2015, appendix table)", "88.71", "K=5000"),
    ("IWAE k=50, 1 stochastic layer (Burda et al. 2015)", "87.10", "K=5000"),
    ("VAE (pythae reproduction)", "89.78", "200 importance samples"),
]


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def run_one(name: str, args: argparse.Namespace) -> dict:
    config = RunConfig(
        model=ModelConfig(likelihood="bernoulli", **MODELS[name]),
        data=DataConfig(dataset="binarized-mnist", data_dir=args.data_dir),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            figures=True,
            eval_batch_size=2000,
        ),
    )
    run_dir = Path(args.runs) / f"{name}-e{args.epochs}"
    t0 = time.perf_counter()
    if (run_dir / "training_state.safetensors").exists():
        result = aevb.resume(run_dir, epochs=args.epochs, progress=not args.quiet)
    else:
        result = aevb.train(config, run_dir, progress=not args.quiet)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = aevb.evaluate(
        result.model,
        aevb.load_dataset(result.config.data),
        "test",
        k=args.k,
        batch_size=args.eval_batch_size,
        progress=not args.quiet,
    )
    eval_s = time.perf_counter() - t1
    return {
        "model": name,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "k": args.k,
        "test_log_px_iw": res["log_px_iw"],
        "test_log_px_iw_se": res["log_px_iw_se"],
        "test_neg_elbo": res["neg_elbo"],
        "test_neg_elbo_se": res["neg_elbo_se"],
        "active_units": res["active_units"],
        "latent_dim": MODELS[name]["latent_dim"],
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "machine": machine(),
        "torch": torch.__version__,
        "run_dir": str(run_dir),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | training budget | test -log p(x), K=5000 (nats) | test neg-ELBO | active units | "
        "train / eval time | machine |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| aevb {r['model']} | {r['epochs']} epochs, batch {r['batch_size']}, Adam lr {r['lr']} | "
            f"**{-r['test_log_px_iw']:.2f}** ± {r['test_log_px_iw_se']:.2f} | "
            f"{r['test_neg_elbo']:.2f} ± {r['test_neg_elbo_se']:.2f} | "
            f"{r['active_units']} / {r['latent_dim']} | {r['train_seconds']:.0f} s / {r['eval_seconds']:.0f} s | "
            f"{r['machine']} |"
        )
    for label, value, how in PUBLISHED:
        lines.append(f"| {label} | paper (3,280 epochs) | {value} ({how}) | | | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="burda,pytorch-example")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--eval-batch-size", type=int, default=500)
    p.add_argument("--device", default="auto")
    p.add_argument("--runs", default="runs/scoreboard")
    p.add_argument("--results", default="benchmarks/results/scoreboard.jsonl")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    rows = []
    for name in args.models.split(","):
        row = run_one(name, args)
        rows.append(row)
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
