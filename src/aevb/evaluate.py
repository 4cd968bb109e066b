"""Exact evaluation of a whole split: every example exactly once, one reduction at the end.

:func:`evaluate` is the honest likelihood (importance-sampled log p(x), the ELBO and its
gap, rate and distortion, active units, bits/dim); :func:`evaluate_objective` scores a
training objective on a split (validation during training). Both use only the model
interface, so they hold for every model. Per-example quantities are accumulated as sums
and sums of squares (float64, :mod:`aevb.accumulate`), so each mean comes with its
standard error. Noise is seeded per batch (seed, batch index): evaluation is
reproducible, equal across world sizes, and never perturbs the training RNG stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import native
from .accumulate import MeanAccumulator, all_reduce_
from .data.base import DataSource
from .data.transforms import EIGHT_BIT, on_8bit_grid

DEQUANTIZE_SALT = 0x5DEECE66D  # keeps the dequantisation noise apart from the sampling noise


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of the noise for evaluation batch ``batch_index`` (independent of world size)."""
    return (seed * 1_000_003 + batch_index) % 2**64  # what torch takes, for any seed >= 0


@torch.no_grad()
def objective_sums(
    model: nn.Module,
    objective,
    dataset: DataSource,
    split: str,
    batch_size: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> MeanAccumulator:
    """Accumulate an objective's per-example terms (train=False: beta 1, exact samples) over
    this rank's batches of a split; batch b's noise is drawn from seed (seed, b) on a
    forked RNG."""
    device = device_of(model)
    was_training = model.training
    model.eval()
    noise = model.latent.noise
    devices = [device] if device.type == "cuda" else []

    def terms(x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True) if y is not None else None
        eps = noise.draw(objective.num_samples, len(x), device)
        return objective(model, x, y, eps, {"beta": 1.0}, train=False).per_example()

    with torch.random.fork_rng(devices=devices):
        # Every rank declares the same sums, even one without a batch (sharded splits).
        acc = MeanAccumulator().declare_like(
            terms(dataset.head(split, 1), dataset.head_labels(split, 1)), device
        )
        for b, x, y in dataset.indexed_eval_batches(split, batch_size, rank, world_size):
            torch.manual_seed(batch_seed(seed, b))
            acc.add(**terms(x, y))
    model.train(was_training)
    return acc


def evaluate_objective(
    model: nn.Module,
    objective,
    dataset: DataSource,
    split: str = "valid",
    batch_size: int = 1000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """An objective's terms (nats per example, with standard errors) on a whole split.

    Under torch.distributed each rank scores its shard and the sums are all-reduced; the
    result equals one process's (same per-batch noise) up to summation order.

    Returns:
        ``{"neg_elbo", "neg_elbo_se", "recon_nll", ..., "n_examples"}``.
    """
    sums = objective_sums(model, objective, dataset, split, batch_size, seed, rank, world_size)
    acc = all_reduce_(sums)
    res = acc.result()
    res["n_examples"] = acc.n
    return res


def evaluate_elbo(
    model: nn.Module,
    dataset: DataSource,
    split: str = "test",
    batch_size: int = 1000,
    seed: int = 0,
    samples: int = 1,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """neg-ELBO, recon NLL and KL with L = ``samples`` (nats per example, with standard errors)."""
    from .objectives import ELBO

    return evaluate_objective(
        model, ELBO(samples), dataset, split, batch_size, seed, rank, world_size
    )


def evaluate(
    model: nn.Module | str | Path,
    dataset: DataSource | None = None,
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
    diagnostics: bool = False,
    diagnostic_samples: int = 2000,
    collapse_threshold: float = 0.5,
) -> dict[str, Any]:
    """Honest likelihood of a whole split: IW log p(x), ELBO, gap, rate, distortion, AU, bits/dim.

    Every example is scored exactly once (batches need not divide the split). Under
    torch.distributed each rank scores its shard and the sums are all-reduced.

    Args:
        model: a trained model (any model of :mod:`aevb.models`), or a run directory (the
            model and its dataset are loaded from it).
        dataset: the data (default: the run's dataset); ``split`` names the part to score.
        k: importance samples per example (K = 5000 for published numbers).
        chunk_size: most (example, sample) pairs of a chunk (at least one group of
            ``aevb.workspace.group_size(batch_size)`` samples); memory is bounded by it (a
            few chunks per worker thread on a CPU with several threads) and results do
            not depend on it. Default: 4096 on the CPU (the decoder runs a group
            of samples at a time through all its layers, so its activations stay in
            cache whatever the chunk; a chunk is one worker's task, see
            :class:`aevb.workspace.Workers`), 262144 on a GPU (large matmuls, few launches).
        naive: if > 0, also the naive prior-sampling estimate with this many samples.
        batch_size: examples per encoder pass.
        seed: noise seed (per batch: seed, batch index).
        diagnostics: also :func:`aevb.diagnostics.diagnose` of the whole split (not sharded):
            the aggregate posterior against the prior from ``diagnostic_samples`` draws, class
            usage, and the collapse check at ``collapse_threshold``, under ``diagnostics``.

    Bits per dimension are reported only where they are honest (see :func:`bits_per_dim_kind`):
    ``bits_per_dim`` when the likelihood is a probability of the data's discrete values (a
    Bernoulli on binary data, ``dmol`` on 8-bit data); ``bits_per_dim_dequantized`` for a
    continuous density on 8-bit data, an upper bound on the bits/dim of the discrete model
    the density defines, from one uniformly dequantised copy of each example (see
    :func:`aevb.estimators.dequantized_bits_per_dim`); neither otherwise.
    ``bits_per_dim_note`` says which, and why. A model that scores part of each example (a
    completion model: the missing part) counts only those dimensions.

    Returns:
        A JSON-able dict with (means over examples, each with a ``_se`` standard error)
        ``log_px_iw``, ``neg_elbo``, ``rate`` (KL), ``distortion`` (reconstruction NLL),
        ``gap`` (log p(x) - ELBO), ``bits_per_dim`` or ``bits_per_dim_dequantized`` (with
        ``bits_per_dim_kind`` and ``bits_per_dim_note``), optional ``log_px_naive``; and
        ``kl_per_dim`` (where the KL factorises), ``rate_per_group``, ``active_units`` and
        ``au_variance`` (continuous latents; ``active_units_per_group`` for several
        groups), ``k``, ``n_examples``,
        ``num_dims``, ``split``, ``seconds``, ``examples_x_k_per_s``. Also ``recon_nll`` and
        ``kl``, the same numbers as ``distortion`` and ``rate`` under their training names.
        ``point_mass_posterior`` is True when q(z|x) is a point mass z_q (VQ-VAE): then
        ``log_px_iw`` is the bound ``log p(x|z_q) + log p(z_q) <= log p(x)`` whatever K.
    """
    import time

    from tqdm.auto import tqdm

    from .estimators import (
        active_units,
        bits_per_dim,
        dequantized_bits_per_dim,
        importance_weighted,
        naive_prior,
    )

    model, dataset = _model_and_data(model, dataset)
    lik = model.likelihood
    probability = binary = on_grid = True
    for x, _ in dataset.eval_batches(split, batch_size):
        lik.check_data(x)
        probability = probability and lik.scores_probability(x)
        binary = binary and bool(((x == 0) | (x == 1)).all())
        on_grid = on_grid and on_8bit_grid(x)
    bits_kind, bits_note = bits_per_dim_kind(lik.name, lik.discrete, probability, binary, on_grid)
    device = device_of(model)
    if chunk_size is None:
        chunk_size = default_chunk_size(device)
    num_dims = model.num_scored_dims()
    scored = model.scored_mask
    latent = model.latent
    scalar_keys = ("log_px_iw", "neg_elbo", "rate", "distortion", "gap")
    scalar_keys += {
        "discrete": ("bits_per_dim",),
        "dequantized": ("bits_per_dim_dequantized",),
    }.get(bits_kind, ())
    scalar_keys += ("log_px_naive",) if naive > 0 else ()
    acc = MeanAccumulator().declare(scalar_keys, device)
    acc.declare(("summary",), device, (latent.summary_dim,))
    acc.declare(("rate_groups",), device, (len(latent.groups),))
    per_dim = _kl_per_dim_size(model, dataset, split)  # declared up front: ranks must agree
    if per_dim:
        acc.declare(("kl_per_dim",), device, (per_dim,))
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    kernel_calls = native.calls()
    batches = list(dataset.indexed_eval_batches(split, batch_size, rank, world_size))
    desc = f"evaluate {split} (K={k})"
    for b, x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True) if y is not None else None
        r = importance_weighted(model, x, k, chunk_size, seed=batch_seed(seed, b), y=y)
        if bits_kind == "discrete":
            r["bits_per_dim"] = bits_per_dim(r["log_px_iw"], num_dims)
        elif bits_kind == "dequantized":  # the density at one point of each scored bin
            g = torch.Generator(device=device).manual_seed(batch_seed(seed, b) ^ DEQUANTIZE_SALT)
            u = torch.rand(x.shape, generator=g, device=device, dtype=x.dtype) - 0.5
            noise = u / EIGHT_BIT if scored is None else u * scored.to(x.dtype) / EIGHT_BIT
            r_y = importance_weighted(model, x + noise, k, chunk_size, batch_seed(seed, b), y=y)
            r["bits_per_dim_dequantized"] = dequantized_bits_per_dim(r_y["log_px_iw"], num_dims)
        if naive > 0:
            r["log_px_naive"] = naive_prior(
                model, x, naive, chunk_size, seed=batch_seed(seed, b), y=y
            )
        vectors = {"summary": r["summary"], "rate_groups": r["rate_groups"]}
        if per_dim:
            vectors["kl_per_dim"] = r["kl_per_dim"]
        acc.add(**{key: r[key] for key in scalar_keys}, **vectors)
    acc = all_reduce_(acc)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    model.train(was_training)

    res: dict[str, Any] = acc.result()
    for key in ("summary", "summary_se", "kl_per_dim_se", "rate_groups", "rate_groups_se"):
        res.pop(key, None)
    res["rate_per_group"] = dict(
        zip((g.name for g in latent.groups), acc.mean("rate_groups").tolist(), strict=True)
    )
    if latent.kind == "continuous":  # Burda et al.'s active units: Cov_x E_q[z_j] > 0.01
        au, au_var = active_units(acc.sums["summary"], acc.sq_sums["summary"], acc.n)
        res.update(active_units=au, au_variance=au_var.tolist())
        if len(latent.groups) > 1:
            res["active_units_per_group"] = {
                g.name: int((au_var[sl] > 0.01).sum())
                for g, sl in zip(latent.groups, latent.group_slices().values(), strict=True)
            }
    else:
        res.update(active_units=None, au_variance=None)
    # A point-mass q (VQ-VAE's codes) makes the estimate log p(x|z_q) + log p(z_q) from its
    # one sample: a lower bound on log p(x) that no K tightens.
    res["point_mass_posterior"] = latent.noise.deterministic
    res.update(
        recon_nll=res["distortion"],
        recon_nll_se=res["distortion_se"],
        kl=res["rate"],
        kl_se=res["rate_se"],
        k=k,
        naive_samples=naive,
        chunk_size=chunk_size,
        n_examples=acc.n,
        num_dims=num_dims,
        log_px_name=model.log_px_name,
        bits_per_dim_kind=bits_kind,
        bits_per_dim_note=bits_note,
        split=split,
        seconds=round(seconds, 3),
        examples_x_k_per_s=acc.n * k / seconds if seconds > 0 else float("nan"),
        compute=compute_note(device, native.calls() - kernel_calls),
    )
    if diagnostics:
        from .diagnostics import diagnose

        res["diagnostics"], _, _ = diagnose(
            model,
            dataset,
            split,
            res,
            samples=diagnostic_samples,
            collapse_threshold=collapse_threshold,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        )
    return res


def compute_note(device: torch.device, kernel_calls: int) -> str:
    """What computed an evaluation, for its report: the device, PyTorch's threads and, on a
    CPU, whether aevb's native kernels computed part of it (``kernel_calls``, counted over
    the evaluation by :func:`aevb.native.calls`), or why not."""
    if device.type != "cpu":
        return device.type
    head = f"cpu, {torch.get_num_threads()} PyTorch thread(s)"
    why = native.status(load=False)
    if kernel_calls:
        return f"{head}; native kernels used ({why.removeprefix('in use: ')})"
    if why.startswith("in use"):
        return f"{head}; native kernels not needed by this model"
    return f"{head}; native kernels {why}"


def bits_per_dim_kind(
    likelihood: str, discrete: bool, probability: bool, binary: bool, on_grid: bool
) -> tuple[str | None, str]:
    """Which bits per dimension are honest for this likelihood on these data, and why.

    Args:
        likelihood: the likelihood's name (for the note).
        discrete: the likelihood is a probability over discrete values (``Likelihood.discrete``).
        probability: its log_prob is a probability of *these* data's values
            (``Likelihood.scores_probability`` on every batch).
        binary: every value is 0 or 1.
        on_grid: every value is some v/255, v = 0..255 (8-bit data).

    Returns:
        ``("discrete", note)``, ``("dequantized", note)`` or ``(None, note)``.
    """
    if probability:
        return "discrete", (
            f"bits_per_dim = -log P(x) / (D ln 2): the {likelihood} likelihood is a probability "
            "of the data's discrete values"
        )
    if not discrete and on_grid and not binary:
        return "dequantized", (
            f"bits_per_dim_dequantized = (-log p(x + u/255) + D log 255) / (D ln 2), "
            f"u ~ U(-1/2, 1/2)^D, one draw per example: the {likelihood} likelihood is a "
            "density, scored on uniformly dequantised 8-bit data; an upper bound (in "
            "expectation) on the bits/dim of the discrete model it defines"
        )
    if discrete:
        return None, (
            f"bits/dim omitted: the {likelihood} likelihood is a probability of binary values, "
            "but these data are not binary (grey levels get a cross-entropy, not a "
            "probability); binarise them (--binarize) or use --likelihood dmol on 8-bit images"
        )
    what = "binary" if binary else "not 8-bit (v/255)"
    return None, (
        f"bits/dim omitted: the {likelihood} likelihood is a density and the data are {what}, "
        "so its bits/dim would depend on the data's scale"
    )


@torch.no_grad()
def _kl_per_dim_size(model: nn.Module, dataset: DataSource, split: str) -> int:
    """Width of the model's per-dimension KL (0 when its KL has no closed form per dimension)."""
    x, y = dataset.head(split, 1), dataset.head_labels(split, 1)
    device = device_of(model)
    x, y = x.to(device), (y.to(device) if y is not None else None)
    y = model.context(x, y)
    kl = model.kl(model.posterior(x, y), model.prior(y))
    return 0 if kl is None or kl.per_dim is None else kl.per_dim.shape[-1]


def default_chunk_size(device: torch.device) -> int:
    """(example, sample) pairs per chunk: a worker's task on the CPU (4096: measured 1-3%
    faster than 2048 with two workers, the same on one thread), large on a GPU."""
    return 262_144 if device.type == "cuda" else 4096


def _model_and_data(
    model: nn.Module | str | Path, dataset: DataSource | None
) -> tuple[nn.Module, DataSource]:
    """Load a run's model (and, unless given, its dataset); check the shapes agree."""
    from .checkpoint import load_config, load_model
    from .errors import DataError

    if isinstance(model, (str, Path)):
        from .runs import load_run_dataset

        run = model
        model = load_model(run, device="cuda" if torch.cuda.is_available() else "cpu")
        if dataset is None:
            dataset = load_run_dataset(run)
        type(model).fit_config(load_config(run), dataset.info)  # e.g. labels it can use
    if dataset is None:
        raise DataError("evaluate() needs a dataset when given a model rather than a run directory")
    expected = tuple(model.likelihood.event_shape)
    if tuple(dataset.info.shape) != expected:
        raise DataError(
            f"{dataset.info.name} has examples of shape {tuple(dataset.info.shape)} but the model "
            f"expects {expected}"
        )
    return model, dataset


def markdown_report(res: dict[str, Any], title: str = "aevb evaluation") -> str:
    """A Markdown summary of :func:`evaluate`'s result."""
    target = res.get("log_px_name", "log p(x)")
    rows = [
        (f"{target}, importance-sampled", "log_px_iw"),
        (f"{target}, naive prior sampling", "log_px_naive"),
        (f"neg-ELBO (upper bound on -{target})", "neg_elbo"),
        (f"gap {target} - ELBO", "gap"),
        ("rate: KL(q(z|x) || p(z))", "rate"),
        ("distortion: -E_q log p(x|z)", "distortion"),
        ("bits per dimension", "bits_per_dim"),
        ("bits per dimension, dequantised (upper bound)", "bits_per_dim_dequantized"),
    ]
    point_mass = bool(res.get("point_mass_posterior"))
    if point_mass:
        rows[0] = ("log p(x) >= log p(x|z_q) + log p(z_q), a bound", "log_px_iw")
        rows[-1] = ("bits per dimension (an upper bound)", "bits_per_dim")
    samples = (
        "one sample of the point-mass posterior (K does not apply)"
        if point_mass
        else f"K = {res['k']} importance samples"
    )
    lines = [
        f"# {title}",
        "",
        f"Split `{res['split']}`: {res['n_examples']} examples, {samples}"
        + (f", {res['naive_samples']} naive prior samples" if res.get("naive_samples") else "")
        + f"; {res['seconds']:.1f} s ({res['examples_x_k_per_s']:.3g} examples x K per second).",
        *([f"Computed on {res['compute']}.", ""] if res.get("compute") else [""]),
        "Nats per example; the sign is in each name (log p(x) is negative, the others positive).",
        "",
        "| quantity (nats per example) | mean | standard error |",
        "| --- | ---: | ---: |",
    ]
    for label, key in rows:
        if key in res:
            cell = label.replace("|", "\\|")  # a table cell: escape the bars of p(x|z)
            lines.append(f"| {cell} | {res[key]:.4f} | {res[key + '_se']:.4f} |")
    if point_mass:
        lines += [
            "",
            "q(z|x) is a point mass at the codes z_q of x, so the importance-sampled estimate "
            "is the bound -log p(x) <= -log p(x|z_q) - log p(z_q) (van den Oord et al. 2017, "
            "section 3.2), equal to the neg-ELBO: no number of samples makes it an estimate "
            "of log p(x) itself.",
        ]
    if res.get("bits_per_dim_note"):
        lines += [
            "",
            f"Bits per dimension ({res['num_dims']} dimensions scored): "
            f"{res['bits_per_dim_note']}.",
        ]
    groups = res.get("rate_per_group") or {}
    if len(groups) > 1:
        lines += ["", "| latent group | rate (nats) | active units |", "| --- | ---: | ---: |"]
        per_group_au = res.get("active_units_per_group") or {}
        for name, r in groups.items():
            lines.append(f"| {name} | {r:.4f} | {per_group_au.get(name, 'n/a')} |")
    variances = res.get("au_variance")
    if res.get("active_units") is not None and variances is not None:
        lines += [
            "",
            f"Active units (Cov_x E_q[z_j] > 0.01): **{res['active_units']} of {len(variances)}**.",
        ]
    per_dim = res.get("kl_per_dim")
    if per_dim is not None or variances is not None:
        n = len(per_dim if per_dim is not None else variances)
        lines += ["", "| latent j | KL_j (nats) | Cov_x E_q[z_j] |", "| ---: | ---: | ---: |"]
        for j in range(n):
            klj = f"{per_dim[j]:.4f}" if per_dim is not None else "n/a"
            v = f"{variances[j]:.4f}" if variances is not None else "n/a"
            lines.append(f"| {j} | {klj} | {v} |")
    if res.get("diagnostics"):
        from .diagnostics import markdown_lines

        lines += markdown_lines(res["diagnostics"])
    return "\n".join(lines) + "\n"
