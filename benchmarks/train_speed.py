"""Training speed: aevb's training loop against the PyTorch example's, and the matmul peak.

Measures, in one run on one machine, training examples per second of the 784-400-20
Bernoulli MLP VAE (ReLU, Adam, lr 1e-3) at batch 128 on 784-dimensional binary data
(binarized MNIST when ``../shared/data`` has it, else synthetic binary data):

  * aevb: ``aevb.train`` itself (the library path: the trainer's batches, noise, forward,
    backward, Adam step and on-device metric sums), the data held as uint8 like aevb's
    binarized-MNIST loader holds it (each batch handed out as float32);
  * reference: the loop of pytorch/examples ``vae/main.py`` as written there — a
    DataLoader over a TensorDataset (shuffle=True), the model as fc1/fc21/fc22/fc3/fc4
    with a sigmoid then ``binary_cross_entropy``, ``loss.item()`` accumulated every step —
    timed over the same number of steps from a fresh epoch;
  * the same math as a plain loop (``run_plain``): the model aevb trains written with
    ``nn.Sequential``, BCE with logits and the closed-form KL, with aevb's direct Adam
    step; what aevb's own objective, metric sums and step checks cost is aevb's rate
    against this one;
  * the dense-matmul bound: ``torch.mm`` alone on exactly the matrix products of one
    training step (forward, input gradients and weight gradients of every layer), back
    to back into preallocated outputs, timed as one more side of the same ABBA rounds
    by the same step clock; also one large square product for the machine's best case.

FLOP counting: a Linear layer (in a, out b) costs 2*n*a*b for its forward product at
batch n; backward costs twice that (input gradient and weight gradient), so a step is
3x the forward matmul FLOPs: 3 * 2 * 128 * (784*400 + 400*40 + 20*400 + 400*784)
= 0.50 GFLOP (the encoder's fc21/fc22 counted as one 400->40 layer; elementwise work,
and the unneeded input gradient of the first layer, ignored). The fraction of peak is
(examples/s / 128) * FLOPs per step / peak.

Timing: one optimizer-step hook (``register_optimizer_step_post_hook``, the same for both
loops and the bound) stamps the end of every step; after ``--warmup`` steps, ``--steps``
steps are timed, so one-off costs (building the model, the final validation and
checkpoint of ``aevb.train``) fall outside the window. Each side is timed ``--repeats``
times, interleaved in ABBA order. Rates are medians over repeats, per wall second and per
CPU-second of this process (all its threads); speed-ups and the fraction of the bound are
medians over repeats of the ratio of two sides timed in the same round: this machine's
speed drifts by +-20% within minutes, which ratios of neighbours cancel and separately
taken medians (or a best-of-n bound against a median rate) do not.

Usage:
    python benchmarks/train_speed.py                  # CPU, all threads torch uses
    python benchmarks/train_speed.py --threads 1 --repeats 3 --json
    python benchmarks/train_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import BINARIZED_MNIST  # noqa: E402  (benchmarks/_machine.py)

import aevb  # noqa: E402
from aevb import Dataset, DatasetInfo, RunConfig  # noqa: E402

BOUND = "torch.mm alone at the step's shapes (bound)"
PLAIN = "the same math as a plain PyTorch loop"
D = 784
ARCHS = {
    # name: (hidden widths, latent size, activation)
    "pytorch-example": ((400,), 20, "relu"),
    "burda": ((200, 200), 50, "tanh"),
}


def layers(arch: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(in, out) of every matrix product of the encoder and of the decoder, as aevb builds
    them (the mean and log-variance heads as one product, like fc21 and fc22)."""
    hidden, latent, _ = ARCHS[arch]
    enc = [D, *hidden, 2 * latent]
    dec = [latent, *reversed(hidden), D]
    return list(zip(enc[:-1], enc[1:], strict=True)), list(zip(dec[:-1], dec[1:], strict=True))


def load_data(n: int) -> tuple[torch.Tensor, str]:
    """``[n, 784]`` binary float32: binarized MNIST train (the .amat text file), or synthetic."""
    path = BINARIZED_MNIST / "binarized_mnist_train.amat.gz"
    if path.exists():
        with gzip.open(path, "rb") as f:
            chars = np.frombuffer(f.read(), dtype=np.uint8)
        bits = chars[(chars == ord("0")) | (chars == ord("1"))] - ord("0")
        x = torch.from_numpy(bits.reshape(-1, D)[:n].astype(np.float32))
        return x, f"binarized MNIST train ({len(x):,} examples)"
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((n, D), 0.13), generator=g)
    return x, f"synthetic binary ({n:,} examples, p=0.13)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the reference: pytorch/examples vae/main.py ------------------------------------------
class ExampleVAE(nn.Module):
    """The model of pytorch/examples ``vae/main.py``, as written there."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def example_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def run_reference(x: torch.Tensor, n_steps: int, batch: int, device: torch.device) -> None:
    """The example's training loop (one epoch, stopped after ``n_steps`` steps)."""
    torch.manual_seed(0)
    model = ExampleVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=batch, shuffle=True)
    model.train()
    train_loss = 0.0
    for batch_idx, (data, _) in enumerate(loader):
        if batch_idx == n_steps:
            break
        data = data.to(device)
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = example_loss(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()


# --- the same math in a plain loop: what aevb's own machinery costs --------------------
def run_plain(x: torch.Tensor, n_steps: int, batch: int, device: torch.device, arch: str) -> None:
    """The model aevb trains (``arch``), written as a plain loop: ``nn.Sequential`` encoder
    and decoder, the reparameterised sample, BCE with logits, the closed-form KL, and the
    same direct fused Adam step as aevb (``aevb.fused_adam``); a uint8-held batch gathered
    and converted as aevb's data does. No objective classes, metric sums or skip of
    non-finite steps: the floor aevb's loop is measured against."""
    from aevb import fused_adam

    hidden, latent, activation = ARCHS[arch]
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]

    def seq(sizes: list[int]) -> nn.Sequential:
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            mods += [nn.Linear(a, b)] + ([act()] if i < len(sizes) - 2 else [])
        return nn.Sequential(*mods).to(device)

    torch.manual_seed(0)
    enc, dec = seq([D, *hidden, 2 * latent]), seq([latent, *reversed(hidden), D])
    params = [*enc.parameters(), *dec.parameters()]
    opt = fused_adam.Adam(params, lr=1e-3, fused=device.type in ("cpu", "cuda"))
    found_inf = torch.zeros((), device=device)
    held = x.to(device=device, dtype=torch.uint8)
    perm = torch.randperm(len(x), device=device)
    for i in range(n_steps):
        xb = held[perm[i * batch : (i + 1) * batch]].float()
        mu, logvar = enc(xb).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = F.binary_cross_entropy_with_logits(dec(z), xb, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        loss = (rec + kl).mean()
        opt.zero_grad()
        loss.backward()
        fused_adam.step(opt, found_inf)


# --- aevb ------------------------------------------------------------------------------
def run_aevb(
    dataset: Dataset,
    n_steps: int,
    batch: int,
    device: torch.device,
    arch: str,
    k: int,
    compile: bool = False,
) -> None:
    """``aevb.train`` for ``n_steps`` steps into a throwaway run directory (IWAE when k > 1)."""
    hidden, latent, activation = ARCHS[arch]
    objective = {"objective": "iwae", "k": k} if k > 1 else {}
    config = RunConfig().replace(
        hidden=hidden,
        latent_dim=latent,
        activation=activation,
        likelihood="bernoulli",
        batch_size=batch,
        lr=1e-3,
        steps=n_steps,
        figures=False,
        device=device.type,
        compile=compile,
        **objective,
    )
    with tempfile.TemporaryDirectory() as tmp:
        aevb.train(config, Path(tmp) / "run", dataset=dataset, progress=False)


class StepClock:
    """Stamps the end of optimizer steps ``warmup`` .. ``warmup + steps`` (syncing CUDA there).

    Wall time and this process's CPU time (all its threads) are both recorded: on a
    machine shared with other work, examples per CPU-second still measure the work done.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.count, self.stamps, self.cpu = 0, [], []

    def __call__(self, optimizer, args, kwargs) -> None:
        self.count += 1
        if self.warmup <= self.count <= self.warmup + self.steps:
            if self.device.type == "cuda" and self.count in (self.warmup, self.warmup + self.steps):
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

    def rates(self, batch: int) -> dict[str, float]:
        """Examples/s over the window, from the median step time, and per CPU-second."""
        if len(self.stamps) != self.steps + 1:
            raise RuntimeError(f"timed {len(self.stamps) - 1} steps, expected {self.steps}")
        n = self.steps * batch
        return {
            "window": n / (self.stamps[-1] - self.stamps[0]),
            "median_step": batch / float(np.median(np.diff(self.stamps))),
            "cpu": n / (self.cpu[-1] - self.cpu[0]),
        }


def timed(run, warmup: int, steps: int, batch: int, device: torch.device) -> dict[str, float]:
    clock = StepClock(warmup, steps, device)
    handle = register_optimizer_step_post_hook(clock)
    try:
        run(warmup + steps)
    finally:
        handle.remove()
    return clock.rates(batch)


# --- the matmul peak -------------------------------------------------------------------
def step_matmuls(arch: str, batch: int, k: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every product of one training step: forward, input grad, weight grad.

    The encoder sees the batch, the decoder ``batch * k`` rows (k samples per example).
    """
    enc, dec = layers(arch)
    shapes = []
    for rows, group in ((batch, enc), (batch * k, dec)):
        for a, b in group:
            shapes += [(rows, a, b), (rows, b, a), (b, rows, a)]
    return shapes


def forward_flops(arch: str, batch: int, k: int) -> int:
    enc, dec = layers(arch)
    return sum(2 * batch * a * b for a, b in enc) + sum(2 * batch * k * a * b for a, b in dec)


def mm_steps(shapes: list[tuple[int, int, int]], device: torch.device):
    """The matmul bound as a side of the benchmark: ``run(n)`` does ``n`` "steps" of
    ``torch.mm`` alone over the step's products (into preallocated outputs), each stamped
    through the optimizer-step hooks like a training step, so that it is timed in the same
    ABBA rounds, by the same clock, as the training loops."""
    mats = [
        (
            torch.randn(m, k, device=device),
            torch.randn(k, n, device=device),
            torch.empty(m, n, device=device),
        )
        for m, k, n in shapes
    ]
    param = torch.zeros(1, device=device, requires_grad=True)
    stamp = torch.optim.SGD([param], lr=0.0)  # its step() runs the step hooks

    def run(n: int) -> None:
        for _ in range(n):
            for a, b, out in mats:
                torch.mm(a, b, out=out)
            stamp.step()

    return run


def mm_rate(
    shapes: list[tuple[int, int, int]], device: torch.device, reps: int
) -> tuple[float, float]:
    """FLOP/s of ``torch.mm`` over ``shapes`` back to back: per wall second and per CPU-second
    of this process (each the best of 5 timings)."""
    mats = [
        (torch.randn(m, k, device=device), torch.randn(k, n, device=device)) for m, k, n in shapes
    ]
    flops = sum(2 * m * k * n for m, k, n in shapes)
    for a, b in mats:
        torch.mm(a, b)
    best_wall = best_cpu = float("inf")
    for _ in range(5):
        sync(device)
        t, c = time.perf_counter(), time.process_time()
        for _ in range(reps):
            for a, b in mats:
                torch.mm(a, b)
        sync(device)
        best_wall = min(best_wall, (time.perf_counter() - t) / reps)
        best_cpu = min(best_cpu, (time.process_time() - c) / reps)
    return flops / best_wall, flops / best_cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="pytorch-example", choices=sorted(ARCHS))
    p.add_argument(
        "--k",
        type=int,
        default=1,
        help="IWAE samples (k > 1 trains --objective iwae; no reference)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=300, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--examples", type=int, default=50_000, help="training examples used")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="aevb train --compile true (compiled in the warm-up steps, outside the window)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device = torch.device(args.device)
    batch = args.batch_size
    x, source = load_data(args.examples)
    if args.warmup + args.steps > len(x) // batch:
        raise SystemExit(f"--warmup + --steps must fit in one epoch ({len(x) // batch} steps)")

    info = DatasetInfo("binarized-mnist", (D,), (0.0, 1.0), False, "bernoulli", source)
    held = x.to(torch.uint8)  # as aevb's binarized-MNIST loader holds it (float32 batches)
    dataset = Dataset(info, {"train": held, "valid": held[:500], "test": held[:500]})
    sides = {"aevb": lambda n: run_aevb(dataset, n, batch, device, args.arch, args.k, args.compile)}
    if args.arch == "pytorch-example" and args.k == 1:  # the reference trains only this one
        sides["reference"] = lambda n: run_reference(x, n, batch, device)
    if args.k == 1:
        sides[PLAIN] = lambda n: run_plain(x, n, batch, device, args.arch)
    shapes = step_matmuls(args.arch, batch, args.k)
    sides[BOUND] = mm_steps(shapes, device)
    for run in sides.values():
        run(5)  # warm-up: lazy initialisation, allocator, thread pool
    rates: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for i in range(args.repeats):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))  # ABBA: cancels drift
        for name in order:
            rates[name].append(timed(sides[name], args.warmup, args.steps, batch, device))
    bound_rates = rates.pop(BOUND)
    del sides[BOUND]
    plain_rates = rates.pop(PLAIN, None)
    sides.pop(PLAIN, None)

    def paired(
        kind: str, other: list[dict[str, float]], mine: list[dict[str, float]] | None = None
    ) -> float:
        """Median over rounds of aevb's (or ``mine``'s) rate / the other side's in the same round."""
        mine = rates["aevb"] if mine is None else mine
        return statistics.median(a[kind] / b[kind] for a, b in zip(mine, other, strict=True))

    def med(name: str, kind: str) -> float:
        return statistics.median(r[kind] for r in rates[name])

    has_ref = "reference" in sides
    aevb_med, aevb_step_med, aevb_cpu = (
        med("aevb", kind) for kind in ("window", "median_step", "cpu")
    )
    if has_ref:
        ref_med, ref_step_med, ref_cpu = (
            med("reference", kind) for kind in ("window", "median_step", "cpu")
        )
    else:
        ref_med = ref_step_med = ref_cpu = float("nan")

    step_flops = 3 * forward_flops(args.arch, batch, args.k)
    peak_at_shapes = statistics.median(r["window"] for r in bound_rates) / batch * step_flops
    peak_at_shapes_cpu = statistics.median(r["cpu"] for r in bound_rates) / batch * step_flops
    peak_square, _ = mm_rate([(2048, 2048, 2048)], device, reps=3)
    aevb_flops = aevb_med / batch * step_flops
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = {
        "model": f"{args.arch} ({'-'.join(map(str, [D, *ARCHS[args.arch][0], ARCHS[args.arch][1]]))}, "
        f"{ARCHS[args.arch][2]}) Bernoulli MLP "
        + (f"IWAE, k = {args.k}" if args.k > 1 else "VAE")
        + ", Adam lr 1e-3",
        "batch_size": batch,
        "data": source,
        "device": device_name,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "steps_timed": args.steps,
        "repeats": args.repeats,
        "aevb_examples_per_s": aevb_med,
        "reference_examples_per_s": ref_med,
        "speedup": paired("window", rates["reference"]) if has_ref else float("nan"),
        "aevb_examples_per_s_all": [r["window"] for r in rates["aevb"]],
        "reference_examples_per_s_all": [r["window"] for r in rates.get("reference", [])],
        "aevb_examples_per_s_median_step": aevb_step_med,
        "reference_examples_per_s_median_step": ref_step_med,
        "speedup_median_step": paired("median_step", rates["reference"])
        if has_ref
        else float("nan"),
        "aevb_examples_per_cpu_s": aevb_cpu,
        "reference_examples_per_cpu_s": ref_cpu,
        "speedup_cpu_time": paired("cpu", rates["reference"]) if has_ref else float("nan"),
        "flops_per_step": step_flops,
        "aevb_gflops": aevb_flops / 1e9,
        "reference_gflops": ref_med / batch * step_flops / 1e9,
        "matmul_peak_at_model_shapes_gflops": peak_at_shapes / 1e9,
        "matmul_peak_square_2048_gflops": peak_square / 1e9,
        "fraction_of_matmul_peak": paired("window", bound_rates),
        "fraction_of_matmul_peak_medians": aevb_flops / peak_at_shapes,
        "fraction_of_square_peak": aevb_flops / peak_square,
        "matmul_at_model_shapes_gflops_per_cpu_s": peak_at_shapes_cpu / 1e9,
        "fraction_of_matmul_peak_cpu_time": paired("cpu", bound_rates),
        "plain_loop_examples_per_s": statistics.median(r["window"] for r in plain_rates)
        if plain_rates
        else float("nan"),
        "plain_loop_fraction_of_matmul_peak": paired("window", bound_rates, plain_rates)
        if plain_rates
        else float("nan"),
        "aevb_over_plain_loop": paired("window", plain_rates) if plain_rates else float("nan"),
        "load_average": [round(v, 2) for v in load_before],
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
        "command": "python " + " ".join(sys.argv),
    }
    out["targets"] = {
        "fraction_of_matmul_peak >= 0.75": out["fraction_of_matmul_peak"] >= 0.75,
        "fraction_of_matmul_peak_cpu_time >= 0.75": out["fraction_of_matmul_peak_cpu_time"] >= 0.75,
    }
    if has_ref:
        out["targets"]["speedup vs the example's loop >= 1.3"] = out["speedup"] >= 1.3
        out["targets"]["speedup_cpu_time vs the example's loop >= 1.3"] = (
            out["speedup_cpu_time"] >= 1.3
        )
        if device.type == "cuda":  # the GPU target
            out["targets"]["speedup vs the example's loop >= 5 (GPU)"] = out["speedup"] >= 5
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"Training speed, {out['model']}, batch {batch}, {source}, "
        f"{device_name} ({out['machine']}), torch {torch.__version__}"
    )
    print(
        f"median of {args.repeats} repeats of {args.steps} steps; load average "
        f"{out['load_average']} -> {out['load_average_end']}; command: {out['command']}"
    )
    print()
    print("| training loop | examples / s | GFLOP/s | speed-up | examples / CPU-s | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")

    def times(ratio: float) -> str:
        return f"{ratio:.2f}x" if has_ref else "-"

    print(
        f"| aevb.train | {aevb_med:,.0f} | {out['aevb_gflops']:.1f} | {times(out['speedup'])} "
        f"| {aevb_cpu:,.0f} | {times(out['speedup_cpu_time'])} |"
    )
    if has_ref:
        print(
            f"| pytorch/examples vae/main.py loop | {ref_med:,.0f} | {out['reference_gflops']:.1f} "
            f"| 1.00x | {ref_cpu:,.0f} | 1.00x |"
        )
    if plain_rates:
        print(
            f"| {PLAIN} | {out['plain_loop_examples_per_s']:,.0f} | "
            f"{out['plain_loop_examples_per_s'] / batch * step_flops / 1e9:.1f} | | | |"
        )
    print(
        f"| torch.mm alone at the step's shapes (bound) | "
        f"{peak_at_shapes / step_flops * batch:,.0f} | {peak_at_shapes / 1e9:.1f} | | | |"
    )
    print()
    reference = (
        f", reference {ref_step_med:,.0f} examples/s ({times(out['speedup_median_step'])})"
        if has_ref
        else " examples/s"
    )
    print(
        f"From the median single-step time: aevb {aevb_step_med:,.0f}{reference}. CPU-s count "
        "every thread of this process: on a shared machine they measure work, not waiting."
    )
    print()
    print(
        f"FLOPs per step (3 x forward matmuls): {step_flops / 1e9:.3f} GFLOP. aevb reaches "
        f"{100 * out['fraction_of_matmul_peak']:.0f}% of the torch.mm rate at the model's "
        f"shapes and {100 * out['fraction_of_square_peak']:.0f}% of a 2048^3 torch.mm "
        f"({peak_square / 1e9:.1f} GFLOP/s); per CPU-second, "
        f"{100 * out['fraction_of_matmul_peak_cpu_time']:.0f}% of torch.mm at the model's shapes "
        f"({peak_at_shapes_cpu / 1e9:.1f} GFLOP per CPU-s)."
    )
    if plain_rates:
        print()
        print(
            "The same math as a plain PyTorch loop (nn.Sequential, BCE, the closed-form KL, "
            "the same direct Adam step) reaches "
            f"{100 * out['plain_loop_fraction_of_matmul_peak']:.0f}% of the torch.mm rate; "
            f"aevb.train runs at {out['aevb_over_plain_loop']:.2f}x that loop's speed "
            "(medians of paired ratios): what aevb's objective, metrics and step checks cost."
        )
    print()
    for target, met in out["targets"].items():
        print(f"target {target}: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
