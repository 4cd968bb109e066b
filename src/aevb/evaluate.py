"""Exact evaluation of a whole split: every example exactly once, one reduction at the end.

Per-example quantities are accumulated as sums and sums of squares (float64), so each
reported mean comes with its standard error ``sqrt(var / n)``. Sampling noise is drawn
from a forked RNG seeded by ``seed``: evaluation is reproducible and never perturbs the
training RNG stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .data.base import Dataset


@dataclass
class MeanAccumulator:
    """Running sums (on the device) of per-example values; no host sync until ``result``."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    sq_sums: dict[str, Tensor] = field(default_factory=dict)
    n: int = 0

    def add(self, **values: Tensor) -> None:
        """Add ``[B]`` per-example tensors (all with the same B)."""
        b = None
        for k, v in values.items():
            v = v.detach().to(torch.float64)
            b = v.shape[0]
            if k not in self.sums:
                self.sums[k] = torch.zeros((), dtype=torch.float64, device=v.device)
                self.sq_sums[k] = torch.zeros((), dtype=torch.float64, device=v.device)
            self.sums[k] += v.sum()
            self.sq_sums[k] += v.pow(2).sum()
        self.n += b or 0

    def merge_(self, sums: dict[str, Tensor], sq_sums: dict[str, Tensor], n: int) -> None:
        for k in sums:
            self.sums[k] = self.sums.get(k, 0) + sums[k]
            self.sq_sums[k] = self.sq_sums.get(k, 0) + sq_sums[k]
        self.n += n

    def result(self) -> dict[str, float]:
        """``{key: mean, key_se: standard error}`` (SE of the mean over examples)."""
        out: dict[str, float] = {}
        for k in self.sums:
            s, sq = float(self.sums[k]), float(self.sq_sums[k])
            mean = s / self.n
            var = max(sq / self.n - mean * mean, 0.0) * self.n / max(self.n - 1, 1)
            out[k] = mean
            out[f"{k}_se"] = math.sqrt(var / self.n)
        return out


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of the noise for evaluation batch ``batch_index`` (independent of world size)."""
    return seed * 1_000_003 + batch_index


def all_reduce_(acc: MeanAccumulator) -> MeanAccumulator:
    """Sum an accumulator over the ranks of an initialised process group (no-op otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return acc
    keys = sorted(acc.sums)
    device = acc.sums[keys[0]].device if keys else torch.device("cpu")
    flat = torch.stack(
        [acc.sums[k] for k in keys] + [acc.sq_sums[k] for k in keys]
        + [torch.tensor(float(acc.n), dtype=torch.float64, device=device)]
    )
    dist.all_reduce(flat)
    n = len(keys)
    acc.sums = {k: flat[i] for i, k in enumerate(keys)}
    acc.sq_sums = {k: flat[n + i] for i, k in enumerate(keys)}
    acc.n = int(round(float(flat[-1])))
    return acc


@torch.no_grad()
def elbo_sums(
    model: nn.Module, batches: Iterable[tuple[int, Tensor]], seed: int = 0
) -> MeanAccumulator:
    """Accumulate neg-ELBO, recon NLL and KL over indexed batches (per example, in nats).

    Each batch's noise is seeded by (seed, batch index), on a forked RNG.
    """
    device = device_of(model)
    acc = MeanAccumulator()
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for b, x in batches:
            torch.manual_seed(batch_seed(seed, b))
            out = model(x.to(device, non_blocking=True))
            acc.add(neg_elbo=out.neg_elbo, recon_nll=out.recon_nll, kl=out.kl, loss=out.loss)
    model.train(was_training)
    return acc


def evaluate_elbo(
    model: nn.Module,
    dataset: Dataset,
    split: str = "test",
    batch_size: int = 1000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    """neg-ELBO, recon NLL and KL (nats per example, with standard errors) on a whole split.

    Uses the model's own L (``config.samples``) Monte-Carlo samples per example. Under
    torch.distributed each rank evaluates its shard and the sums are all-reduced; the
    result equals one process's (same per-batch noise) up to summation order.

    Returns:
        ``{"neg_elbo", "neg_elbo_se", "recon_nll", ..., "n_examples"}``.
    """
    batches = dataset.indexed_eval_batches(split, batch_size, rank, world_size)
    acc = all_reduce_(elbo_sums(model, batches, seed))
    res = acc.result()
    res["n_examples"] = acc.n
    return res
