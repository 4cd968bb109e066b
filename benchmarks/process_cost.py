"""Whole-process cost of a short binarized-MNIST training run, and where aevb's time goes.

Two whole processes, timed side by side from spawn to exit (ABBA order over
``--repeats``, medians; wall time and the CPU time of the child, all its threads):
  * ``aevb train --dataset binarized-mnist --epochs 3 --hidden 400 --latent-dim 20
    --batch-size 128 --figures false`` (the PyTorch example's model and batch);
  * ``benchmarks/pytorch_example_vae.py --epochs 3``: pytorch/examples ``vae/main.py`` on
    the same binarized-MNIST files (parsed by the example itself, no cache, no checksum).

Then one more ``aevb train``, instrumented from inside (the same command), splits its
wall time into: start-up and imports (Python, torch, aevb), data (verify, parse or read the cache), model and
optimizer, the training steps (from the start of each epoch's loop to its last optimizer
step: batches, noise, forward, backward, Adam), validation, checkpoints and logs, the
final model file, and the rest. The target: the process costs at most 1 s more than its
training steps. It also says whether ``torch._dynamo`` was imported (1.2-1.5 s: torch.optim
imports it when an optimizer is built in torch 2.13; ``aevb.fused_adam.Adam`` does not),
what is left beyond the steps once ``import torch`` is set aside (the part aevb's own code
decides), and whether aevb's modules were loaded from cached bytecode.

The children run with Python's bytecode cache on (``PYTHONDONTWRITEBYTECODE`` removed
from their environment; the warm-up run writes the ``__pycache__`` folders), as an
installed package runs: without it every process compiles aevb's ~20,000 lines of source
again (~0.15 s on this project's CPU), which no user's install does.

Usage:
    python benchmarks/process_cost.py --data-dir DIR              # DIR/binarized_mnist/*.amat.gz
    python benchmarks/process_cost.py --data-dir DIR --threads 1 --repeats 3 --json

The cache is written beside the data files (``DIR`` must be writable for aevb to use it;
a read-only folder is read without one). The first aevb run of a fresh folder builds it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
T0_ENV = "PROCESS_COST_T0"


def aevb_argv(data_dir: str, epochs: int, out: str) -> list[str]:
    return [
        "train",
        "--dataset",
        "binarized-mnist",
        "--data-dir",
        data_dir,
        "--epochs",
        str(epochs),
        "--hidden",
        "400",
        "--latent-dim",
        "20",
        "--batch-size",
        "128",
        "--figures",
        "false",
        "--no-progress",
        "--out",
        out,
    ]


def run_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds from spawn to exit, CPU-seconds of the child) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    env = {**env, T0_ENV: repr(time.time())}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


# --- the instrumented child -------------------------------------------------------------
def child(out_path: str, argv: list[str]) -> None:
    """Run ``aevb ARGV`` in this process with timers around its phases; write them as JSON."""
    t0 = float(os.environ[T0_ENV])
    phases: dict[str, float] = {}
    clock = time.time

    def mark(name: str, since: float) -> float:
        now = clock()
        phases[name] = phases.get(name, 0.0) + now - since
        return now

    t = mark("start-up (Python)", t0)
    import torch

    t = mark("import torch", t)
    import importlib

    import aevb.cli

    # (importlib: the package re-exports a function under the name ``train``)
    tr = importlib.import_module("aevb.train")
    ckpt = importlib.import_module("aevb.checkpoint")

    mark("import aevb", t)

    def timed(owner, name: str, phase: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            s = clock()
            try:
                return fn(*a, **k)
            finally:
                mark(phase, s)

        setattr(owner, name, wrapper)

    timed(tr, "load_dataset", "data (verify + parse, or the cache)")
    timed(tr, "build_model", "model and optimizer")
    timed(torch.optim.Adam, "__init__", "model and optimizer")
    timed(tr, "evaluate_objective", "validation (10,000 examples per epoch)")
    for name in ("save_training_state", "save_config", "append_metrics", "truncate_metrics"):
        timed(ckpt, name, "checkpoints, config and metrics files")
    timed(tr, "_write_artifact", "final model file")
    timed(tr.rundir, "claim", "run directory claim and lock")
    likelihoods = importlib.import_module("aevb.likelihoods")
    timed(likelihoods.Likelihood, "check_data", "data check (range, finite)")
    timed(likelihoods.Bernoulli, "check_data", "data check (range, finite)")

    # Steps: from the start of each epoch's loop to its last optimizer step.
    epoch_start: list[float] = []
    step_end: list[float] = []
    real_epoch = tr._train_epoch

    def train_epoch(*a, **k):
        epoch_start.append(clock())
        return real_epoch(*a, **k)

    tr._train_epoch = train_epoch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda *_: step_end.append(clock()))
    sys.argv = ["aevb", *argv]
    code = aevb.cli.main()  # as the `aevb` command runs it (argv None: the process entry)
    end = clock()
    steps = 0.0
    for i, s in enumerate(epoch_start):
        stop = epoch_start[i + 1] if i + 1 < len(epoch_start) else end
        inside = [e for e in step_end if s <= e < stop]
        if inside:
            steps += inside[-1] - s
    result = {
        "code": code,
        "main_returned": end - t0,
        "steps_s": steps,
        "n_steps": len(step_end),
        "dynamo_imported": "torch._dynamo" in sys.modules,
        "bytecode_cached": _bytecode_cached(aevb.cli),
        "phases": phases,
    }
    Path(out_path).write_text(json.dumps(result))


def _bytecode_cached(module) -> bool:
    """Whether ``module`` has a bytecode cache file beside its source (the import used it
    when it is no older than the source)."""
    import importlib.util

    try:
        cached = Path(importlib.util.cache_from_source(module.__file__))
        return cached.stat().st_mtime >= Path(module.__file__).stat().st_mtime
    except (OSError, NotImplementedError, TypeError):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder holding binarized_mnist/")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the children")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    env = dict(os.environ)
    no_bytecode = env.pop("PYTHONDONTWRITEBYTECODE", None) is not None  # see the docstring
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        n = iter(range(1_000_000))

        def aevb_cmd() -> list[str]:
            return [sys.executable, "-m", "aevb"] + aevb_argv(
                args.data_dir, args.epochs, f"{tmp}/run{next(n)}"
            )

        example = [
            sys.executable,
            str(HERE / "pytorch_example_vae.py"),
            "--epochs",
            str(args.epochs),
            "--data-dir",
            args.data_dir,
        ]
        run_process(aevb_cmd(), env)  # warm-up: builds the data cache, fills the page cache
        run_process(example, env)
        sides = {"aevb train": aevb_cmd, "pytorch/examples vae/main.py": lambda: example}
        wall: dict[str, list[float]] = {s: [] for s in sides}
        cpu: dict[str, list[float]] = {s: [] for s in sides}
        for r in range(args.repeats):
            for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
                w, c = run_process(sides[name](), env)
                wall[name].append(w)
                cpu[name].append(c)
        out_json = f"{tmp}/child.json"
        inner = [sys.executable, __file__, "--child", out_json, "--", *aevb_cmd()[3:]]
        inst_wall, _ = run_process(inner, env)
        inst = json.loads(Path(out_json).read_text())
    med = {s: statistics.median(v) for s, v in wall.items()}
    med_cpu = {s: statistics.median(v) for s, v in cpu.items()}
    overhead = inst_wall - inst["steps_s"]
    phases = {**inst["phases"], "training steps": inst["steps_s"]}
    phases["interpreter exit (after main returned)"] = inst_wall - inst["main_returned"]
    phases["rest (progress, schedules, RNG, ...)"] = inst_wall - sum(phases.values())
    out = {
        "epochs": args.epochs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "threads": args.threads or "default",
        "load_average": [round(v, 2) for v in load_before],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "wall_s": med,
        "cpu_s": med_cpu,
        "wall_s_all": wall,
        "ratio_wall_aevb_over_example": med["aevb train"] / med["pytorch/examples vae/main.py"],
        "ratio_cpu_aevb_over_example": med_cpu["aevb train"]
        / med_cpu["pytorch/examples vae/main.py"],
        "instrumented_wall_s": inst_wall,
        "instrumented_steps": inst["n_steps"],
        "torch._dynamo imported": inst["dynamo_imported"],
        "phases_s": phases,
        "overhead_beyond_steps_s": overhead,
        "overhead_beyond_steps_and_import_torch_s": overhead - phases["import torch"],
        "bytecode_cached": inst["bytecode_cached"],
        "PYTHONDONTWRITEBYTECODE_removed_for_children": no_bytecode,
        "target overhead <= 1 s": overhead <= 1.0,
        "command": "python " + " ".join(sys.argv),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"Whole process, {args.epochs} epochs of binarized MNIST (784-400-20, batch 128), "
        f"{out['machine']}, threads {out['threads']}; load average {out['load_average']} -> "
        f"{out['load_average_end']}; median of {args.repeats} ABBA repeats"
    )
    print(f"command: {out['command']}")
    print()
    print("| process | wall s | CPU s |")
    print("| --- | ---: | ---: |")
    for s in sides:
        print(f"| {s} | {med[s]:.1f} | {med_cpu[s]:.1f} |")
    print(
        f"| ratio aevb / example | {out['ratio_wall_aevb_over_example']:.2f} "
        f"| {out['ratio_cpu_aevb_over_example']:.2f} |"
    )
    print()
    print(
        f"Where one aevb train's {inst_wall:.2f} s go ({inst['n_steps']} steps; torch._dynamo "
        f"{'imported' if inst['dynamo_imported'] else 'not imported'}; aevb's modules "
        f"{'from cached bytecode' if inst['bytecode_cached'] else 'compiled from source'}):"
    )
    print()
    print("| phase | s |")
    print("| --- | ---: |")
    for name, s in phases.items():
        print(f"| {name} | {s:.2f} |")
    print()
    print(
        f"beyond the training steps: {overhead:.2f} s; target <= 1 s: "
        f"{'met' if overhead <= 1.0 else 'NOT met'}"
    )
    print(
        f"beyond the training steps and `import torch` ({phases['import torch']:.2f} s): "
        f"{out['overhead_beyond_steps_and_import_torch_s']:.2f} s"
    )
    if no_bytecode:
        print(
            "(PYTHONDONTWRITEBYTECODE was set here; the children ran without it, with "
            "Python's bytecode cache as an installed package has it.)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:])
    else:
        main()
