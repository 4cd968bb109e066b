"""Rate and distortion as beta varies: the beta-VAE sweep on binarized MNIST.

Trains one model per beta with ``aevb.train`` (the same architecture, schedule and seed),
then measures on the test set the rate R = KL(q(z|x) || p(z)) and the distortion
D = -E_q log p(x|z) (nats per example) with ``aevb.evaluate``, and draws the
rate-distortion plane: each beta is a point (R, D); the lines R + D = const are the
iso-ELBO lines (beta = 1 maximises the ELBO, the point touching the lowest one), and the
slope of the curve at a point is -beta (Alemi et al. 2018, "Fixing a Broken ELBO",
https://arxiv.org/abs/1711.00464).

Usage::

    python benchmarks/rate_distortion.py --data-dir ../shared/data
    python benchmarks/rate_distortion.py --betas 0.1,0.5,1,2,8 --epochs 20

Results: one JSON line per beta in ``benchmarks/results/rate_distortion.jsonl`` and the
figure ``docs/images/rate_distortion.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--betas", default="0.1,0.25,0.5,1,2,4,8")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--latent-dim", type=int, default=20)
    p.add_argument("--k", type=int, default=100, help="importance samples for log p(x)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--runs", default=str(ROOT / "runs" / "rate_distortion"))
    p.add_argument("--results", default=str(ROOT / "benchmarks/results/rate_distortion.jsonl"))
    p.add_argument("--figure", default=str(ROOT / "docs/images/rate_distortion.png"))
    args = p.parse_args()

    import aevb

    rows = []
    for beta in (float(b) for b in args.betas.split(",")):
        fields = dict(
            dataset="binarized-mnist",
            hidden=(400,),
            latent_dim=args.latent_dim,
            activation="relu",
            likelihood="bernoulli",
            beta=beta,
            epochs=args.epochs,
            batch_size=100,
            lr=1e-3,
            figures=False,
            eval_batch_size=2000,
        )
        if args.data_dir:
            fields["data_dir"] = str(Path(args.data_dir).resolve())
        config = aevb.RunConfig().replace(**fields)
        run = Path(args.runs) / f"beta-{beta:g}"
        t0 = time.perf_counter()
        if not (run / "model.safetensors").exists():
            aevb.train(config, run, progress=False)
        train_s = time.perf_counter() - t0
        res = aevb.evaluate(run, split="test", k=args.k)
        row = {
            "beta": beta,
            "rate": res["rate"],
            "distortion": res["distortion"],
            "neg_elbo": res["neg_elbo"],
            "neg_log_px": -res["log_px_iw"],
            "active_units": res["active_units"],
            "epochs": args.epochs,
            "k": args.k,
            "train_seconds": round(train_s, 1),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    draw(rows, Path(args.figure))


def draw(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    r = np.array([row["rate"] for row in rows])
    d = np.array([row["distortion"] for row in rows])
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.plot(r, d, "o-", color="tab:blue")
    for row in rows:
        ax.annotate(f"β={row['beta']:g}", (row["rate"], row["distortion"]), xytext=(5, 4),
                    textcoords="offset points", fontsize=9)  # fmt: skip
    lo = min(r + d)
    span = np.linspace(0, max(r.max(), 1) * 1.1, 50)
    for c in (lo, lo + 10, lo + 25):
        ax.plot(span, c - span, ":", color="grey", lw=0.8)
    ax.set_xlim(0, max(r.max(), 1) * 1.1)
    ax.set_ylim(max(0, d.min() - 10), d.max() + 10)
    ax.set_xlabel("rate R = KL(q(z|x) || p(z)), nats per example")
    ax.set_ylabel("distortion D = −E_q log p(x|z), nats per example")
    ax.set_title("β-VAE on binarized MNIST: dotted lines are R + D = const (iso-ELBO)")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
