"""Exact evaluation of a whole split: every example exactly once, one reduction at the end.

Per-example quantities are accumulated as sums and sums of squares (float64), so each
reported mean comes with its standard error ``sqrt(var / n)``. Sampling noise is drawn
from a forked RNG seeded by ``seed``: evaluation is reproducible and never perturbs the
training RNG stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data.base import Dataset


class MeanAccumulator:
    """Running sums (on the device) of per-example values; no host sync until ``result``.

    Values are ``[B]`` (a scalar per example) or ``[B, D]`` (a vector per example, e.g. the
    per-dimension KL). Scalars given together are stacked into one ``[K, B]`` tensor, so
    a training step costs a handful of kernels whatever K. Sums are float64.
    """

    def __init__(self) -> None:
        # key tuple -> [sum [K, ...], sum of squares [K, ...]]
        self._groups: dict[tuple[str, ...], list[Tensor]] = {}
        self.n = 0

    def add(self, **values: Tensor) -> None:
        """Add per-example tensors ``[B, ...]`` (all with the same B)."""
        if not values:
            return
        scalars = [k for k, v in values.items() if v.dim() == 1]
        if scalars:
            stacked = torch.stack([values[k].detach() for k in scalars]).to(torch.float64)
            self._accumulate(tuple(scalars), stacked.sum(1), stacked.pow(2).sum(1))
        for k, v in values.items():
            if v.dim() > 1:
                v = v.detach().to(torch.float64)
                self._accumulate((k,), v.sum(0)[None], v.pow(2).sum(0)[None])
        self.n += next(iter(values.values())).shape[0]

    def declare(
        self, keys: tuple[str, ...], device: torch.device | str, shape: tuple[int, ...] = ()
    ) -> MeanAccumulator:
        """Start a group at zero, as ``add`` would make it, so that every rank of a
        distributed reduction holds the same tensors, even a rank that adds nothing."""
        if len(keys) > 1 and shape:
            raise ValueError("vector-valued keys are declared one at a time")
        zeros = torch.zeros((len(keys), *shape), dtype=torch.float64, device=device)
        self._accumulate(keys, zeros, zeros.clone())
        return self

    def _accumulate(self, keys: tuple[str, ...], s: Tensor, sq: Tensor) -> None:
        group = self._groups.get(keys)
        if group is None:
            clash = set(keys) & set(self.sums)
            if clash:
                raise ValueError(f"keys {sorted(clash)} were accumulated with other keys before")
            self._groups[keys] = [s, sq]
        else:
            group[0] += s
            group[1] += sq

    @property
    def sums(self) -> dict[str, Tensor]:
        return {k: g[0][i] for keys, g in self._groups.items() for i, k in enumerate(keys)}

    @property
    def sq_sums(self) -> dict[str, Tensor]:
        return {k: g[1][i] for keys, g in self._groups.items() for i, k in enumerate(keys)}

    def tensors(self) -> list[Tensor]:
        """The accumulator's state tensors (for an in-place all-reduce)."""
        return [t for g in self._groups.values() for t in g]

    def mean(self, key: str) -> Tensor:
        return self.sums[key] / self.n

    def result(self) -> dict[str, float | list[float]]:
        """``{key: mean, key_se: standard error of the mean over examples}``."""
        out: dict[str, float | list[float]] = {}
        sq_sums = self.sq_sums
        for k, total in self.sums.items():
            n = self.n
            mean = total / n
            var = (sq_sums[k] / n - mean.pow(2)).clamp_min(0) * n / max(n - 1, 1)
            se = (var / n).sqrt()
            out[k] = mean.item() if mean.dim() == 0 else mean.tolist()
            out[f"{k}_se"] = se.item() if se.dim() == 0 else se.tolist()
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
    tensors = acc.tensors()
    device = tensors[0].device if tensors else torch.device("cpu")
    count = torch.tensor([float(acc.n)], dtype=torch.float64, device=device)
    flat = torch.cat([t.reshape(-1) for t in tensors] + [count])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
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
    acc = MeanAccumulator().declare(("neg_elbo", "recon_nll", "kl", "loss"), device)
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


def evaluate(
    model: nn.Module | str | Path,
    dataset: Dataset | None = None,
    split: str = "test",
    k: int = 100,
    *,
    chunk_size: int | None = None,
    naive: int = 0,
    batch_size: int = 500,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Honest likelihood of a whole split: IW log p(x), ELBO, gap, rate, distortion, AU, bits/dim.

    Every example is scored exactly once (batches need not divide the split). Under
    torch.distributed each rank scores its shard and the sums are all-reduced.

    Args:
        model: a trained model (see :mod:`aevb.estimators` for the methods it needs), or
            a run directory (the model and its dataset are loaded from it).
        dataset: the data (default: the run's dataset); ``split`` names the part to score.
        k: importance samples per example (K = 5000 for published numbers).
        chunk_size: most (example, sample) pairs decoded at once; memory is bounded by it
            and results do not depend on it. Default: 2048 on the CPU (the decoder's
            activations stay in cache), 262144 on a GPU (large matmuls, few launches).
        naive: if > 0, also the naive prior-sampling estimate with this many samples.
        batch_size: examples per encoder pass.
        seed: noise seed (per batch: seed, batch index).

    Returns:
        A JSON-able dict with (means over examples, each with a ``_se`` standard error)
        ``log_px_iw``, ``neg_elbo``, ``rate`` (KL), ``distortion`` (reconstruction NLL),
        ``gap`` (log p(x) - ELBO), ``bits_per_dim``, optional ``log_px_naive``; and
        ``kl_per_dim``, ``active_units``, ``au_variance``, ``k``, ``n_examples``,
        ``num_dims``, ``split``, ``seconds``, ``examples_x_k_per_s``. Also ``recon_nll`` and
        ``kl``, the same numbers as ``distortion`` and ``rate`` under their training names.
    """
    import time

    from tqdm.auto import tqdm

    from .estimators import active_units, bits_per_dim, importance_weighted, naive_prior

    model, dataset = _model_and_data(model, dataset)
    model.likelihood.check_data(dataset.tensor(split))
    device = device_of(model)
    if chunk_size is None:
        chunk_size = default_chunk_size(device)
    num_dims = math.prod(dataset.info.shape)
    scalar_keys = ("log_px_iw", "neg_elbo", "rate", "distortion", "gap", "bits_per_dim")
    scalar_keys += ("log_px_naive",) if naive > 0 else ()
    latent = model.config.latent_dim
    acc = MeanAccumulator().declare(scalar_keys, device)
    acc.declare(("kl_per_dim",), device, (latent,)).declare(("mu",), device, (latent,))
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    batches = list(dataset.indexed_eval_batches(split, batch_size, rank, world_size))
    for b, x in tqdm(batches, desc=f"evaluate {split} (K={k})", disable=not progress, leave=False):
        x = x.to(device, non_blocking=True)
        r = importance_weighted(model, x, k, chunk_size, seed=batch_seed(seed, b))
        r["bits_per_dim"] = bits_per_dim(r["log_px_iw"], num_dims)
        if naive > 0:
            r["log_px_naive"] = naive_prior(model, x, naive, chunk_size, seed=batch_seed(seed, b))
        acc.add(**{k: r[k] for k in scalar_keys}, kl_per_dim=r["kl_per_dim"], mu=r["mu"])
    acc = all_reduce_(acc)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    model.train(was_training)

    res: dict[str, Any] = acc.result()
    au, au_var = active_units(acc.sums["mu"], acc.sq_sums["mu"], acc.n)
    for key in ("mu", "mu_se", "kl_per_dim_se"):
        res.pop(key, None)
    res.update(
        recon_nll=res["distortion"],
        recon_nll_se=res["distortion_se"],
        kl=res["rate"],
        kl_se=res["rate_se"],
        active_units=au,
        au_variance=au_var.tolist(),
        k=k,
        naive_samples=naive,
        chunk_size=chunk_size,
        n_examples=acc.n,
        num_dims=num_dims,
        split=split,
        seconds=round(seconds, 3),
        examples_x_k_per_s=acc.n * k / seconds if seconds > 0 else float("nan"),
    )
    return res


def default_chunk_size(device: torch.device) -> int:
    """(example, sample) pairs per decoder call: cache-sized on the CPU, large on a GPU."""
    return 262_144 if device.type == "cuda" else 2048


def _model_and_data(
    model: nn.Module | str | Path, dataset: Dataset | None
) -> tuple[nn.Module, Dataset]:
    """Load a run's model (and, unless given, its dataset); check the shapes agree."""
    from .checkpoint import load_config, load_model
    from .data import load_dataset
    from .errors import DataError

    if isinstance(model, (str, Path)):
        run = model
        model = load_model(run, device="cuda" if torch.cuda.is_available() else "cpu")
        if dataset is None:
            dataset = load_dataset(load_config(run).data)
    if dataset is None:
        raise DataError("evaluate() needs a dataset when given a model rather than a run directory")
    expected = tuple(model.config.input_shape)
    if tuple(dataset.info.shape) != expected:
        raise DataError(
            f"{dataset.info.name} has examples of shape {tuple(dataset.info.shape)} but the model "
            f"expects {expected}"
        )
    return model, dataset


def markdown_report(res: dict[str, Any], title: str = "aevb evaluation") -> str:
    """A Markdown summary of :func:`evaluate`'s result."""
    rows = [
        ("log p(x), importance-sampled", "log_px_iw"),
        ("log p(x), naive prior sampling", "log_px_naive"),
        ("negative ELBO", "neg_elbo"),
        ("gap log p(x) - ELBO", "gap"),
        ("rate: KL(q(z|x) || p(z))", "rate"),
        ("distortion: -E_q log p(x|z)", "distortion"),
        ("bits per dimension", "bits_per_dim"),
    ]
    lines = [
        f"# {title}",
        "",
        f"Split `{res['split']}`: {res['n_examples']} examples, K = {res['k']} importance samples"
        + (f", {res['naive_samples']} naive prior samples" if res.get("naive_samples") else "")
        + f"; {res['seconds']:.1f} s ({res['examples_x_k_per_s']:.3g} examples x K per second).",
        "",
        "| quantity (nats per example) | mean | standard error |",
        "| --- | ---: | ---: |",
    ]
    for label, key in rows:
        if key in res:
            lines.append(f"| {label} | {res[key]:.4f} | {res[key + '_se']:.4f} |")
    d = len(res["kl_per_dim"])
    lines += [
        "",
        f"Active units (Cov_x E_q[z_j] > 0.01): **{res['active_units']} of {d}**.",
        "",
        "| latent j | KL_j (nats) | Cov_x E_q[z_j] |",
        "| ---: | ---: | ---: |",
    ]
    for j, (klj, v) in enumerate(zip(res["kl_per_dim"], res["au_variance"], strict=True)):
        lines.append(f"| {j} | {klj:.4f} | {v:.4f} |")
    return "\n".join(lines) + "\n"
