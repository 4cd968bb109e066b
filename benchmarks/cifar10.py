"""CIFAR-10 test bits/dim of a VAE with a residual encoder/decoder and the dmol likelihood.

The model: ``--arch resnet`` (two residual blocks at every reduced resolution) with a
vector latent and the discretized logistic mixture likelihood (``--likelihood dmol``,
PixelCNN++'s per-pixel mixture), so -log P(x) is a probability of the 8-bit pixel values
and bits/dim are honest. Test bits/dim come from ``aevb.evaluate`` with K importance
samples (an upper bound in expectation on the model's true bits/dim, tight as K grows).

Usage::

    # the long budget (a GPU; CIFAR-10 from --data-dir, or downloaded with its checksum):
    python benchmarks/cifar10.py cifar10 --data-dir ~/data --device cuda
    # the run possible on a CPU without CIFAR-10: the same pipeline on the 8-bit MNIST test
    # split (first 7,500 images train, next 500 validate, last 2,000 test), from the IDX
    # files in ../shared/data/mnist, through an .npz written to a temporary folder:
    python benchmarks/cifar10.py mnist8 --mnist-dir ../shared/data/mnist
    python benchmarks/cifar10.py --table          # the results beside the published values

Each finished run appends one JSON line to ``benchmarks/results/cifar10.jsonl``: test
bits/dim with its standard error, K, the budget (steps, epochs, batch), wall and CPU
seconds, the machine, the exact command and the commit.

Published test bits/dim on CIFAR-10 (lower is better), for scale:

* VAE (deep convolutional, continuous latents): 4.51 — van den Oord, Vinyals &
  Kavukcuoglu 2017, "Neural Discrete Representation Learning" (VQ-VAE), section 4.1;
* VQ-VAE: 4.67 — same paper, same section;
* NVAE: 2.91 — Vahdat & Kautz 2020, https://arxiv.org/abs/2007.03898;
* VDVAE: 2.87 — Child 2021, https://arxiv.org/abs/2011.10650.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402  (benchmarks/_machine.py)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cifar10.jsonl"

PUBLISHED = [
    ("VAE", 4.51, "van den Oord et al. 2017 (VQ-VAE paper), sec. 4.1"),
    ("VQ-VAE", 4.67, "van den Oord et al. 2017, sec. 4.1"),
    ("NVAE", 2.91, "Vahdat & Kautz 2020"),
    ("VDVAE", 2.87, "Child 2021"),
]

# name -> what it measures and the config fields of the run
SETUPS: dict[str, dict] = {
    "cifar10": {
        "what": "CIFAR-10 test split (10,000 images), official 50,000 training images less a "
        "held-out 5,000 for validation",
        "fields": dict(
            dataset="cifar10",
            arch="resnet",
            hidden=(64, 128, 256),
            latent_dim=128,
            likelihood="dmol",
            mixtures=10,
            batch_size=64,
            lr=1e-3,
            schedule="cosine",
            warmup_epochs=2.0,
            epochs=500,
            grad_clip=200.0,
            eval_batch_size=500,
        ),
        "k": 1000,
    },
    "mnist8": {
        "what": "8-bit MNIST, the official *test* split only (the training split is not on this "
        "machine): images 0-7,499 train, 7,500-7,999 validate, 8,000-9,999 test",
        "fields": dict(
            arch="resnet",
            hidden=(16, 32),
            latent_dim=16,
            likelihood="dmol",
            mixtures=5,
            batch_size=64,
            lr=2e-3,
            steps=3000,
            grad_clip=200.0,
            eval_batch_size=500,
        ),
        "k": 100,
    },
}


def mnist_npz(mnist_dir: Path, folder: Path) -> Path:
    """The 8-bit MNIST test split as ``train``/``valid``/``test`` uint8 arrays in an .npz."""
    import numpy as np

    from aevb.data.idx import parse_idx

    images = parse_idx((mnist_dir / "t10k-images-idx3-ubyte").read_bytes(), "t10k images")
    path = folder / "mnist8.npz"
    np.savez(path, train=images[:7500], valid=images[7500:8000], test=images[8000:])
    return path


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores (load average {load:.1f} at the end), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "src", "benchmarks"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(name: str, args: argparse.Namespace) -> dict:
    import aevb

    setup = SETUPS[name]
    code = commit()  # the code that runs, before anything else can change the tree
    fields = dict(setup["fields"], device=args.device, figures=True)
    for key in ("steps", "epochs"):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
            if key == "epochs":
                fields["steps"] = None
    k = args.k or setup["k"]
    with tempfile.TemporaryDirectory() as tmp:
        if name == "mnist8":
            fields["dataset"] = str(mnist_npz(Path(args.mnist_dir), Path(tmp)))
        elif args.data_dir:
            fields["data_dir"] = str(Path(args.data_dir).resolve())
        config = aevb.RunConfig().replace(**fields)
        out = Path(args.out or ROOT / "runs" / f"cifar10-bench-{name}")
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        result = aevb.train(config, out, progress=not args.quiet)
        train_cpu, train_wall = cpu_seconds() - cpu0, time.perf_counter() - t0
        data = aevb.load_dataset(config.data)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        test = aevb.evaluate(result.model, data, "test", k=k, batch_size=100)
        eval_cpu, eval_wall = cpu_seconds() - cpu0, time.perf_counter() - t0
    metrics = result.metrics
    return {
        "setup": name,
        "what": setup["what"],
        "model": f"VAE, resnet {list(fields['hidden'])}, z {fields['latent_dim']}, "
        f"dmol with {fields['mixtures']} mixtures",
        "test_bits_per_dim": test["bits_per_dim"],
        "test_bits_per_dim_se": test["bits_per_dim_se"],
        "test_neg_elbo_bits_per_dim": test["neg_elbo"] / (test["num_dims"] * 0.6931471805599453),
        "bits_per_dim_kind": test["bits_per_dim_kind"],
        "k": k,
        "n_test": test["n_examples"],
        "steps": metrics.get("step"),
        "epochs": metrics.get("epoch"),
        "batch_size": fields["batch_size"],
        "valid_neg_elbo": metrics.get("valid_neg_elbo"),
        "train_wall_s": round(train_wall, 1),
        "train_cpu_s": round(train_cpu, 1),
        "eval_wall_s": round(eval_wall, 1),
        "eval_cpu_s": round(eval_cpu, 1),
        "config": {k2: list(v) if isinstance(v, tuple) else v for k2, v in fields.items()},
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": code,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }


def table(results: list[dict]) -> str:
    """Markdown: our runs (newest per setup), then the published CIFAR-10 values."""
    latest: dict[str, dict] = {}
    for r in results:
        latest[r["setup"]] = r
    lines = [
        "| data | model | budget | test bits/dim (K importance samples) | machine, commit |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for r in latest.values():
        budget = (
            f"{r['steps']} steps ({r['epochs']} epochs) of batch {r['batch_size']}; "
            f"{r['train_wall_s']:.0f} s wall, {r['train_cpu_s']:.0f} s CPU to train, "
            f"{r['eval_cpu_s']:.0f} s CPU to evaluate"
        )
        lines.append(
            f"| {r['what']} | {r['model']} | {budget} | **{r['test_bits_per_dim']:.3f}** ± "
            f"{r['test_bits_per_dim_se']:.3f} (K = {r['k']}; −ELBO "
            f"{r['test_neg_elbo_bits_per_dim']:.3f}) | {r['machine']}, `{r['commit']}`, "
            f"{r['date']} |"
        )
    for name, bits, ref in PUBLISHED:
        lines.append(f"| CIFAR-10 test | {name} — {ref} | published | {bits:.2f} | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("setup", nargs="?", choices=sorted(SETUPS))
    p.add_argument("--table", action="store_true", help="print the results table (Markdown)")
    p.add_argument("--data-dir", help="folder holding cifar10/cifar-10-binary.tar.gz")
    p.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, help="override the setup's training length")
    p.add_argument("--epochs", type=int, help="override the setup's training length")
    p.add_argument("--k", type=int, help="importance samples (default: the setup's)")
    p.add_argument("--out", help="run directory (default runs/cifar10-bench-SETUP)")
    p.add_argument("--no-record", action="store_true", help="do not append to the results")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.table:
        lines = RESULTS.read_text().splitlines() if RESULTS.is_file() else []
        print(table([json.loads(line) for line in lines if line.strip()]))
        return
    if args.setup is None:
        p.error("name a setup (cifar10 or mnist8), or --table")
    rec = run(args.setup, args)
    print(json.dumps(rec))
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
