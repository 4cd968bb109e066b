"""Scoreboard: train one named model on statically binarized MNIST, report test -log p(x).

Usage (data from --data-dir, or downloaded with checksums)::

    python benchmarks/scoreboard.py vae1 --data-dir ../shared/data     # run one row to completion
    python benchmarks/scoreboard.py --list                               # the rows
    python benchmarks/scoreboard.py --readme                             # regenerate the README table

A row trains with ``aevb.train`` on the 50,000 training images (early stopping on the
official 10,000 validation images, the default for every row), then scores the 10,000
test images with ``aevb.evaluate`` at K = 5000 importance samples (Burda et al.'s
protocol), and a fixed 10,000-image subset of the training split the same way, so that
overfitting shows. The weights of chosen epochs are kept as snapshots; each is scored on
the test set at K = 1000 for the curve of test -log p(x) against training hours.

An interrupted row resumes bit-exactly from its run directory (``runs/scoreboard/ROW``)
when the same command is run again. Each finished row appends one JSON line to
``benchmarks/results/scoreboard.jsonl``: the numbers, the exact command, the commit, the
wall and CPU time of training, the machine, the epochs and the schedule. The README's
scoreboard table is generated from that file (``--readme``), never edited by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402  (benchmarks/_machine.py)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scoreboard.jsonl"
FIGURE = ROOT / "docs" / "images" / "scoreboard.png"

BURDA_NET = dict(hidden=(200, 200), activation="tanh", likelihood="bernoulli")
# Our CPU schedule: batch 100, Adam eps 1e-4, 5 epochs of warm-up, then a cosine decay of the
# learning rate to zero at the last epoch; early stopping on the validation neg-ELBO.
CPU_SCHEDULE = dict(
    batch_size=100, lr=1e-3, schedule="cosine", warmup_epochs=5.0, adam_eps=1e-4, patience=200
)
CURVE = (25, 100, 250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000)

# Jang et al.'s MNIST setting: 784-512-256-(20 x 10) with a mirrored decoder, uniform prior,
# tau = max(0.5, exp(-r t)) updated every 500 steps.
GUMBEL = dict(
    model="gumbel",
    hidden=(512, 256),
    activation="relu",
    likelihood="bernoulli",
    variables=20,
    categories=10,
    tau_start=1.0,
    tau_min=0.5,
    tau_rate=1e-4,
    tau_every=500,
    epochs=100,
    **CPU_SCHEDULE,
)
GUMBEL_SCHEDULE = (
    "cpu: batch 100, Adam(eps 1e-4) lr 1e-3, 5-epoch warm-up, cosine to 0; "
    "tau = max(0.5, exp(-1e-4 t)) every 500 steps"
)

# name -> (description, config fields, published -log p(x) or -ELBO with its reference)
ROWS: dict[str, dict] = {
    "vae1": {
        "model": "VAE, 1 stochastic layer, Burda et al.'s 784-200-200-50 tanh",
        "fields": dict(**BURDA_NET, latent_dim=50, epochs=1500, **CPU_SCHEDULE),
        "schedule": "cpu: batch 100, Adam(eps 1e-4) lr 1e-3, 5-epoch warm-up, cosine to 0",
        "published": ("88.71", "Burda et al. 2015, appendix"),
    },
    "vae1-burda": {
        "model": "VAE, 1 stochastic layer, Burda et al.'s 784-200-200-50 tanh",
        "fields": dict(**BURDA_NET, latent_dim=50, schedule="burda", epochs=121, patience=None),
        # The first five of the eight stages (1+3+9+27+81 epochs at 1e-3*10^(-i/7)): the full
        # 3,280 epochs at batch 20 are ~7 h of one CPU core here (--epochs 3280 runs them).
        "schedule": "burda: batch 20, Adam(eps 1e-4), 3^i epochs at 1e-3*10^(-i/7), i=0..4 of 0..7",
        # Scored at K = 1000, as the snapshots of every row's curve: it is the point of
        # comparison of the two schedules at equal training time.
        "eval_k": 1000,
        "published": ("88.71", "Burda et al. 2015, appendix"),
    },
    "vae2": {
        "model": "VAE, 2 stochastic layers, Burda et al.'s 784-200-200-100-100-100-50 tanh",
        "fields": dict(
            **BURDA_NET,
            model="hvae",
            latent_dims=(100, 50),
            hidden_top=(100, 100),
            epochs=1000,
            beta_schedule="linear",
            beta_warmup_steps=25_000,
            **CPU_SCHEDULE,
        ),
        # Without a KL warm-up the learned p(z1|z2) slows learning badly (valid neg-ELBO 113
        # after 235 epochs, against 98.6 for one layer); with it, 108 after 23 epochs.
        "schedule": "cpu, with a linear KL warm-up over the first 50 epochs (Sønderby et al. 2016)",
        "published": ("88.08", "Burda et al. 2015, appendix"),
    },
    "iwae1": {
        "model": "IWAE (k = 5), 1 stochastic layer, 784-200-200-50 tanh",
        "fields": dict(
            **BURDA_NET, latent_dim=50, objective="iwae", k=5, epochs=50, **CPU_SCHEDULE
        ),
        "schedule": "cpu: batch 100, Adam(eps 1e-4) lr 1e-3, 5-epoch warm-up, cosine to 0",
        # A short budget (50 epochs, K = 1000) that fitted beside the long rows on 2 cores.
        "eval_k": 1000,
        "published": ("87.10 (k = 50)", "Burda et al. 2015, appendix"),
    },
    "iwae2": {
        "model": "IWAE (k = 5), 2 stochastic layers",
        "fields": dict(
            **BURDA_NET,
            model="hvae",
            latent_dims=(100, 50),
            hidden_top=(100, 100),
            objective="iwae",
            k=5,
            epochs=50,
            **CPU_SCHEDULE,
        ),
        "schedule": "cpu: batch 100, Adam(eps 1e-4) lr 1e-3, 5-epoch warm-up, cosine to 0",
        # A short budget (50 epochs, K = 1000) that fitted beside the long rows on 2 cores.
        "eval_k": 1000,
        "published": ("85.32 (k = 50)", "Burda et al. 2015, appendix"),
    },
    "vamp": {
        "model": "VAE with a VampPrior (500 pseudo-inputs), 784-200-200-50 tanh",
        "fields": dict(
            **BURDA_NET,
            latent_dim=50,
            prior="vamp",
            pseudo_inputs=500,
            epochs=50,
            beta_schedule="linear",
            beta_warmup_steps=10_000,
            **CPU_SCHEDULE,
        ),
        "schedule": "cpu, with a linear KL warm-up over the first 20 epochs (Tomczak & Welling "
        "warm up over 100 of their 2,000)",
        # A short budget (50 epochs, K = 1000) that fitted beside the long rows on 2 cores.
        "eval_k": 1000,
        "published": ("85.57 (their gated 300-300, 40 latents)", "Tomczak & Welling 2018"),
    },
    # Jang, Gu & Poole (2016), section 4.3 (generative modelling with VAEs): 20 categorical
    # variables of 10 classes, a 784-512-256-(20x10) ReLU MLP and its mirror image, uniform
    # prior, tau annealed max(0.5, exp(-r t)) every 500 steps. Their number is a test -ELBO.
    "gumbel": {
        "model": "Gumbel-softmax VAE, 20 x 10 categorical latents, 784-512-256 ReLU",
        "fields": GUMBEL,
        "schedule": GUMBEL_SCHEDULE,
        # Jang et al. report a test -ELBO; the importance-sampled number beside it is at
        # K = 1000 (the 784-512-256 decoder costs 2.8x Burda's per sample on these 2 cores).
        "eval_k": 1000,
        "published": ("101.5 (−ELBO)", "Jang et al. 2016, §4.3"),
    },
    "gumbel-st": {
        "model": "straight-through Gumbel-softmax VAE, 20 x 10 categorical latents, 784-512-256 ReLU",
        "fields": dict(GUMBEL, straight_through=True),
        "schedule": GUMBEL_SCHEDULE,
        "eval_k": 1000,
        "published": ("107.8 (−ELBO)", "Jang et al. 2016, §4.3"),
    },
    "pytorch-example": {
        "model": "the PyTorch example's 784-400-20 ReLU VAE",
        "fields": dict(
            hidden=(400,),
            latent_dim=20,
            activation="relu",
            likelihood="bernoulli",
            epochs=300,
            **CPU_SCHEDULE,
        ),
        "schedule": "cpu: batch 100, Adam(eps 1e-4) lr 1e-3, 5-epoch warm-up, cosine to 0",
        "published": ("—", "no published number for this architecture"),
    },
}


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = cpu_name()
    threads = torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def run_row(name: str, args: argparse.Namespace) -> dict:
    import torch

    import aevb
    from aevb import checkpoint as ckpt
    from aevb.data import Dataset

    row = ROWS[name]
    fields = dict(row["fields"])
    fields.update(dataset="binarized-mnist", device=args.device, figures=True, eval_batch_size=2000)
    if args.epochs is not None:  # a shorter run of the row (a check, not a scoreboard number)
        fields["epochs"] = args.epochs
    fields.setdefault("snapshot_epochs", tuple(e for e in CURVE if e <= fields.get("epochs", 3280)))
    if args.data_dir:
        fields["data_dir"] = str(Path(args.data_dir).resolve())
    config = aevb.RunConfig().replace(**fields)
    run = Path(args.runs) / name

    # 1. Train (or finish training): the same command resumes an interrupted row exactly.
    if not (run / ckpt.MODEL_FILE).is_file():
        aevb.train(config, run, progress=not args.quiet)
    metrics = ckpt.read_metrics(run)
    # Training's own clocks, kept in the training state across resumes (and so across a
    # killed process); a run begun before aevb kept a CPU clock has no CPU total.
    cpu_s = metrics[-1].get("cpu_time_s") if all("cpu_time_s" in m for m in metrics) else None
    state = json.loads(ckpt.load_tensors(run / ckpt.STATE_FILE)[1]["aevb"])["progress"]
    model = aevb.load(run, device=args.device if args.device != "auto" else "cpu")
    data = aevb.load_dataset(ckpt.load_config(run).data)

    # 2. Score: test at K = 5000, a fixed training subset the same way, and the curve.
    k = args.k if args.k is not None else row.get("eval_k", 5000)
    t0 = time.perf_counter()
    test = aevb.evaluate(model, data, "test", k=k, batch_size=500, progress=not args.quiet)
    eval_s = time.perf_counter() - t0
    subset = data.head("train", 10_000)
    train_subset = Dataset(data.info, {"train": subset, "valid": subset, "test": subset})
    train = aevb.evaluate(model, train_subset, "test", k=k, batch_size=500)
    curve = []
    for path in sorted((run / ckpt.SNAPSHOTS_DIR).glob("epoch-*.safetensors"), key=_epoch):
        snap = aevb.load(run)
        tensors, _ = ckpt.load_tensors(path)
        snap.load_state_dict(tensors)
        r = aevb.evaluate(snap, data, "test", k=args.curve_k, batch_size=500)
        rec = next(m for m in metrics if m["epoch"] == _epoch(path))
        curve.append(
            {
                "epoch": _epoch(path),
                "train_hours": round(rec["wall_time_s"] / 3600, 4),
                "test_neg_log_px": -r["log_px_iw"],
                "test_neg_log_px_se": r["log_px_iw_se"],
                "k": args.curve_k,
            }
        )
    best = next((m for m in metrics if m["epoch"] == state.get("best_epoch")), metrics[-1])
    return {
        "row": name,
        # a shorter or longer run than the row's definition: kept, never shown as the row
        "check": args.epochs is not None or args.k is not None,
        "model": row["model"],
        "schedule": row["schedule"],
        "published": row["published"][0],
        "published_ref": row["published"][1],
        "k": k,
        "test_neg_log_px": -test["log_px_iw"],
        "test_neg_log_px_se": test["log_px_iw_se"],
        "test_neg_elbo": test["neg_elbo"],
        "test_neg_elbo_se": test["neg_elbo_se"],
        "train_subset_neg_log_px": -train["log_px_iw"],
        "train_subset_neg_log_px_se": train["log_px_iw_se"],
        "active_units": test["active_units"],
        "active_units_per_group": test.get("active_units_per_group"),
        "epochs_trained": metrics[-1]["epoch"],
        "best_epoch": state.get("best_epoch"),
        "best_valid_neg_elbo": best.get("valid_neg_elbo"),
        "stopped_early": state.get("stopped_early"),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
        "train_wall_s": round(metrics[-1]["wall_time_s"], 1),
        "train_cpu_s": None if cpu_s is None else round(cpu_s, 1),
        "eval_s": round(eval_s, 1),
        "curve": curve,
        "valid_curve": valid_curve(metrics),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": commit(),
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "run_dir": str(run),
        "torch_version": torch.__version__,
    }


def valid_curve(metrics: list[dict]) -> list[list[float]]:
    """[[epoch, valid neg-ELBO], ...] of a run, for the overfitting figure."""
    return [
        [m["epoch"], round(m["valid_neg_elbo"], 3)]
        for m in metrics
        if isinstance(m.get("valid_neg_elbo"), (int, float))
    ]


def _epoch(path: Path) -> int:
    return int(path.stem.split("-")[1])


# --- the README table ---------------------------------------------------------------------
BEGIN = "<!-- scoreboard:begin (generated by benchmarks/scoreboard.py --readme) -->"
END = "<!-- scoreboard:end -->"


def table(results: list[dict]) -> str:
    latest: dict[str, dict] = {}
    legacy = [r for r in results if "row" not in r]
    for r in results:
        if "row" in r and not r.get("check"):
            latest[r["row"]] = r  # the newest line of each row
    order = list(ROWS)
    latest = dict(
        sorted(latest.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    )
    lines = [
        "| row | model | schedule and budget | test −log p(x) ± SE (K) | test −ELBO | "
        "train-subset −log p(x) | active units | published | machine, commit |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in latest.items():
        au = r["active_units"] if r["active_units"] is not None else "n/a (discrete z)"
        groups = r.get("active_units_per_group")
        if groups:
            au = f"{au} ({', '.join(f'{k}: {v}' for k, v in groups.items())})"
        stop = "stopped early" if r.get("stopped_early") else "best"
        cpu = r.get("train_cpu_s")
        cpu_h = f"{cpu / 3600:.2f} h CPU" if cpu is not None else "CPU time not recorded"
        budget = (
            f"{r['schedule']}; {r['epochs_trained']} epochs ({stop} {r['best_epoch']}), "
            f"{r['train_wall_s'] / 3600:.2f} h wall, {cpu_h}"
        )
        lines.append(
            f"| `{name}` | {r['model']} | {budget} | **{r['test_neg_log_px']:.2f}** ± "
            f"{r['test_neg_log_px_se']:.2f} ({r['k']}) | {r['test_neg_elbo']:.2f} | "
            f"{r['train_subset_neg_log_px']:.2f} | {au} | {r['published']} ({r['published_ref']}) | "
            f"{r['machine'].replace(' 1 threads', ' 1 thread')}, `{r['commit']}`, {r['date']} |"
        )
    for r in legacy:  # lines of the first runner (before the curve and train-subset fields)
        same = {"burda": "vae1"}.get(r["model"])
        published = " ".join(ROWS[same]["published"]) if same else "—"
        lines.append(
            f"| `{r['model']}` (first runner) | {r.get('latent_dim')} latents | constant lr "
            f"{r['lr']}, batch {r['batch_size']}; {r['epochs']} epochs, "
            f"{r['train_seconds'] / 3600:.2f} h wall | **{-r['test_log_px_iw']:.2f}** ± "
            f"{r['test_log_px_iw_se']:.2f} ({r['k']}) | {r['test_neg_elbo']:.2f} | — | "
            f"{r['active_units']} | {published} | {r['machine']}, torch {r['torch']} |"
        )
    curves = [
        f"* `{name}`: "
        + ", ".join(
            f"{p['train_hours']:.2f} h → {p['test_neg_log_px']:.2f}" for p in r.get("curve", [])
        )
        for name, r in latest.items()
        if r.get("curve")
    ]
    if curves:
        lines += [
            "",
            "Test −log p(x) (K = 1000) against training hours, from each row's snapshots "
            "(figure: [docs/images/scoreboard.png](docs/images/scoreboard.png)):",
            "",
        ]
        lines += curves
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> Path:
    """Valid neg-ELBO per epoch (overfitting shows) and test -log p(x) against training hours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = {r["row"]: r for r in results if "row" in r and not r.get("check")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, r in latest.items():
        vc = r.get("valid_curve") or []
        if vc:
            left.plot([e for e, _ in vc], [v for _, v in vc], lw=1, label=f"{name} valid −ELBO")
        pts = r.get("curve") or []
        if pts:
            line = right.plot(
                [p["train_hours"] for p in pts],
                [p["test_neg_log_px"] for p in pts],
                marker="o",
                label=f"{name} test −log p(x), K = {pts[0]['k']}",
            )[0]
            published = r["published"].split()[0]
            if "ELBO" not in r["published"] and published.replace(".", "").isdigit():
                right.axhline(float(published), ls=":", color=line.get_color())
    left.set_xlabel("epoch")
    left.set_ylabel("nats")
    left.set_title("validation −ELBO per epoch")
    right.set_xlabel("training hours (wall, this machine)")
    right.set_ylabel("nats")
    right.set_title("test −log p(x) of the snapshots (dotted: published −log p(x))")
    for ax, span in ((left, 15), (right, 10)):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ys = [min(ln.get_ydata()) for ln in ax.get_lines() if len(ln.get_ydata())]
        lo = min(ys, default=80.0)
        ax.set_ylim(lo - 1, lo + span)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_readme(results: list[dict]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block to fill")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")


def read_results() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("row", nargs="?", choices=sorted(ROWS), help="the row to run")
    p.add_argument("--list", action="store_true", help="list the rows")
    p.add_argument(
        "--readme", action="store_true", help="regenerate the README table and the curves figure"
    )
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--k", type=int, default=None, help="importance samples (default: the row's, 5000)"
    )
    p.add_argument("--curve-k", type=int, default=1000)
    p.add_argument("--runs", default=str(ROOT / "runs" / "scoreboard"))
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override the row's epochs: a check, whose line is kept but not shown as the row",
    )
    p.add_argument("--results", default=str(RESULTS), help="the JSON-lines file to append to")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.list:
        for name, row in ROWS.items():
            print(f"{name:16s} {row['model']}; {row['schedule']}; published {row['published'][0]}")
        return
    if args.readme:
        results = read_results()
        write_readme(results)
        if any("row" in r for r in results):
            plot(results, FIGURE)
        return
    if not args.row:
        p.error("give a ROW (see --list)")
    result = run_row(args.row, args)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    main()
