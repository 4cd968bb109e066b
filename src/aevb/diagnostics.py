"""Posterior diagnostics: the aggregate posterior against the prior, collapse, traversals.

**ELBO surgery** (Hoffman & Johnson 2016, "ELBO surgery: yet another way to carve up the
variational evidence lower bound", NIPS workshop on Advances in Approximate Bayesian
Inference, http://approximateinference.org/2016/accepted/HoffmanJohnson2016.pdf). Over
the N examples x_n of a split, with the aggregate posterior q(z) = (1/N) sum_n q(z|x_n),
the average rate splits into two terms:

    (1/N) sum_n KL(q(z|x_n) || p(z))  =  I(n; z)  +  KL(q(z) || p(z))

``I(n; z)`` is the "index-code" mutual information between the example's index and its
code under q, at most log N (the index carries log N nats), and ``KL(q(z) || p(z))``
says how far the codes the encoder uses, taken together, are from the prior the decoder
is sampled with. A large marginal KL means prior samples land where the decoder was
never trained; a rate made of mutual information is a rate that is used.

**The estimator** (:func:`aggregate_posterior_sample`, :func:`aggregate_kl`): stratified
Monte Carlo over the mixture's components. For M examples (all N, each once, when M >= N;
else a seeded random subset), draw one z_m ~ q(z|x_m) — so z_m ~ q(z) exactly — and compute

    log q(z_m) = logsumexp_n log q(z_m | x_n) - log N          (all N posteriors, chunked)
    KL  ~= mean_m [log q(z_m) - log p(z_m)]
    I   ~= mean_m [log q(z_m | x_m) - log q(z_m)]              (each term <= log N)

log q(z_m) is exact (a sum over every component, not a minibatch), so both means are
unbiased for the aggregate posterior *of these N examples*, the quantities of ELBO
surgery; their standard errors are reported. For the population (N -> infinity) they are
biased: this I is the InfoNCE bound with the encoder as critic (van den Oord et al.
2018; Poole et al. 2019, "On variational bounds of mutual information"), so
E[I] <= I_population (and I <= log N), and E[KL] >= KL_population: the marginal KL is
overstated, by little when exp(I) << N and by much when I nears log N.

The leave-one-out variant (``_loo``) scores z_m against the other N - 1 posteriors only,
log q_-m(z_m) = logsumexp_{n != m} log q(z_m | x_n) - log(N - 1). Given z_m, q_-m(z_m) is
an unbiased estimate of the population density, so by Jensen E[log q_-m] <= log q_pop:
its KL is biased *down* and its I is Poole et al.'s leave-one-out *upper* bound. In
expectation the population values lie between the two: KL_loo <= KL_pop <= KL and
I <= I_pop <= I_loo. (A z that no other posterior can produce, e.g. a code grid seen once,
makes the leave-one-out terms infinite; they are then reported as None.)

The cost is M x N posterior densities. Everything goes through the model interface
(``posterior(x, y)``, ``Posterior.sample_and_log_prob``, ``Posterior.log_prob``,
``prior(y).log_prob``), so it holds for every latent kind: for a deterministic code
posterior q(z) is the empirical distribution of the code grids, and I is its entropy.

**Collapse** (:func:`collapse_check`): a warning when fewer than a fraction (default one
half) of the latent units are in use — active units (Burda et al. 2015) for continuous
latents, variables with a KL above 0.01 nats for categorical ones, codebook entries in
use (the perplexity of the aggregate code usage) for codes.

**Traversals** (:func:`traversal`): one row per latent unit, the rest of z held at an
example's posterior point (or the prior's origin) while that unit sweeps the prior's
quantiles (continuous) or the classes / codes (discrete).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .data.base import Dataset
from .errors import DataError
from .latent import traversal_latents
from .latents import LatentSpace

logger = logging.getLogger("aevb")

# Units whose mean KL is below this many nats count as unused (as Burda et al.'s 0.01).
KL_ACTIVE = 0.01
# Draws of the prior at least, for its marginals in the figure and its class usage.
PRIOR_DRAWS = 2000
# Prior quantile levels a continuous unit is swept over: the central 95%.
TRAVERSAL_LEVELS = (0.025, 0.975)
ESTIMATOR = (
    "stratified Monte Carlo: one z ~ q(z|x_m) for each of M examples, log q(z) by logsumexp "
    "over all N posteriors of the split; unbiased for these N examples' aggregate posterior, "
    "biased up (KL) and down (MI, <= log N) for the population; the leave-one-out variant "
    "(the other N - 1 posteriors) is biased the other way, so the two bracket the population "
    "values in expectation"
)


# --- the aggregate posterior --------------------------------------------------------------
@dataclass(frozen=True)
class AggregateSample:
    """Draws of the aggregate posterior q(z) of a split and the log-densities at them (nats).

    Attributes:
        z: ``[M, *z]`` one draw of q(z|x_m) for each of the M examples drawn.
        index: ``[M]`` which examples of the split (in order).
        log_qzx: ``[M]`` log q(z_m | x_m), float64.
        log_qz: ``[M]`` log q(z_m) = logsumexp_n log q(z_m | x_n) - log N, float64.
        log_qz_loo: ``[M]`` the same over the other N - 1 posteriors (n != m), float64.
        log_pz: ``[M]`` log p(z_m), float64.
        n_examples: N, the examples the aggregate is over.
    """

    z: Tensor
    index: Tensor
    log_qzx: Tensor
    log_qz: Tensor
    log_qz_loo: Tensor
    log_pz: Tensor
    n_examples: int


@torch.no_grad()
def aggregate_posterior_sample(
    model: nn.Module,
    dataset: Dataset,
    split: str = "test",
    samples: int = 2000,
    *,
    batch_size: int = 500,
    seed: int = 0,
    chunk_size: int = 1 << 22,
    progress: bool = False,
) -> AggregateSample:
    """Draw from the aggregate posterior of ``split`` and score the draws (see the module doc).

    Args:
        model: any aevb model.
        dataset, split: the N examples whose posteriors make q(z).
        samples: M, the draws (one per example; all N examples when M >= N).
        batch_size: examples per encoder pass.
        seed: which examples and which noise; the result does not depend on ``batch_size``.
        chunk_size: most latent entries held at once when scoring draws against posteriors.

    Returns:
        An :class:`AggregateSample`.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    latent: LatentSpace = model.latent
    posteriors, contexts = [], []
    for x, y in dataset.eval_batches(split, batch_size):
        x = x.to(device)
        y = y.to(device) if y is not None else None
        posteriors.append((model.posterior(x, y), len(x)))
        contexts.append(y)
    n = sum(b for _, b in posteriors)
    if n < 2:
        raise DataError(
            f"the aggregate posterior needs at least 2 examples; the {split} split has {n}"
        )
    gen = torch.Generator(device=device).manual_seed(seed)
    m = min(samples, n)
    if m == n:  # stratified: every component of the mixture once
        index = torch.arange(n)
    else:
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values
    # Noise for every example of the split at once: example n's draw does not depend on batching.
    eps_all = latent.noise.draw(1, n, device, dtype, gen)
    zs, log_qzx, log_pz = [], [], []
    start = 0
    for (q, b), y in zip(posteriors, contexts, strict=True):
        local = index[(index >= start) & (index < start + b)] - start
        if len(local):
            z, lq = q.sample_and_log_prob(eps_all[:, start : start + b])
            z, lq = z[0, local.to(device)], lq[0, local.to(device)]
            prior = model.prior(y[local.to(device)] if y is not None else None)
            zs.append(z)
            log_qzx.append(lq.double())
            log_pz.append(prior.log_prob(z).double())
        start += b
    z = torch.cat(zs)
    log_qz = torch.full((m,), -math.inf, dtype=torch.float64, device=device)
    log_qz_loo = log_qz.clone()
    own = index.to(device)  # the example each draw came from
    numel = max(1, latent.numel)
    start = 0
    bar = tqdm(total=len(posteriors), desc=f"aggregate posterior {split}", disable=not progress)
    for q, b in posteriors:
        mc = max(1, chunk_size // (b * numel))
        for m0 in range(0, m, mc):
            zc = z[m0 : m0 + mc]
            expanded = zc.unsqueeze(1).expand(len(zc), b, *zc.shape[1:])
            lp = q.log_prob(expanded).double()  # [mc, b]: log q(z_m | x_n)
            log_qz[m0 : m0 + mc] = torch.logaddexp(log_qz[m0 : m0 + mc], lp.logsumexp(1))
            n_of = torch.arange(start, start + b, device=device)
            others = lp.masked_fill(own[m0 : m0 + mc, None] == n_of, -math.inf)
            log_qz_loo[m0 : m0 + mc] = torch.logaddexp(
                log_qz_loo[m0 : m0 + mc], others.logsumexp(1)
            )
        start += b
        bar.update(1)
    bar.close()
    model.train(was_training)
    return AggregateSample(
        z,
        index,
        torch.cat(log_qzx),
        log_qz - math.log(n),
        log_qz_loo - math.log(n - 1),
        torch.cat(log_pz),
        n,
    )


def _mean_se(t: Tensor) -> tuple[float, float]:
    n = t.numel()
    se = float(t.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return float(t.mean()), se


def aggregate_kl(s: AggregateSample) -> dict[str, Any]:
    """ELBO surgery's terms from an :class:`AggregateSample` (nats, with standard errors).

    Returns:
        ``aggregate_kl`` (KL(q(z) || p(z))), ``mutual_information`` (I(n; z) = rate -
        aggregate_kl, at most ``mi_bound`` = log N), ``rate_mc`` (their sum: the Monte-Carlo
        rate at the same draws), and the leave-one-out ``aggregate_kl_loo`` and
        ``mutual_information_loo`` (None where infinite), each with ``_se``; ``samples`` M,
        ``n_examples`` N and ``estimator`` (what was computed).
    """
    kl = s.log_qz - s.log_pz
    mi = s.log_qzx - s.log_qz
    terms = {"aggregate_kl": kl, "mutual_information": mi, "rate_mc": kl + mi}
    terms["aggregate_kl_loo"] = s.log_qz_loo - s.log_pz
    terms["mutual_information_loo"] = s.log_qzx - s.log_qz_loo
    out: dict[str, Any] = {}
    for name, t in terms.items():
        if torch.isfinite(t).all():
            out[name], out[f"{name}_se"] = _mean_se(t)
        else:
            out[name] = out[f"{name}_se"] = None
    out.update(
        mi_bound=math.log(s.n_examples),
        samples=int(s.z.shape[0]),
        n_examples=s.n_examples,
        estimator=ESTIMATOR,
    )
    return out


def class_usage(z: Tensor, latent: LatentSpace) -> Tensor:
    """How often each class is taken, per variable: ``[M, *z]`` -> ``[V, C]`` (rows sum to 1).

    Categorical z (one-hots ``[M, V, C]``) and code grids (indices ``[M, H, W]``, V = H W
    positions, C = the codebook size).
    """
    if latent.kind == "categorical":
        return z.reshape(len(z), -1, latent.shape[-1]).double().mean(0)
    if latent.kind == "codes":
        idx = z.reshape(len(z), -1).long()
        return nn.functional.one_hot(idx, latent.classes).double().mean(0)
    raise ValueError("class usage is for categorical and code latents")


def perplexity(p: Tensor) -> float:
    """exp(entropy) of a distribution ``[C]``: the number of equally used classes it equals."""
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def prior_sample(model: nn.Module, n: int, seed: int = 0, context: Tensor | None = None) -> Tensor:
    """``[n, *z]`` draws of the prior p(z), seeded (for the figure's reference marginals).

    For a conditional model, ``context`` ``[B, ...]`` are the contexts of the data (labels,
    observed parts): each draw takes one of them at random, so the draws follow the prior's
    marginal over the data, sum_y p(y) p(z|y).
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    if context is None or not model.conditional:
        return model.prior().sample(n, 1.0, gen)
    pick = torch.randint(len(context), (n,), generator=torch.Generator().manual_seed(seed))
    return model.prior(context[pick.to(context.device)]).sample(n, 1.0, gen)


def usage_summary(s: AggregateSample, prior_z: Tensor, latent: LatentSpace) -> dict[str, Any]:
    """Discrete latents: perplexity of the class usage pooled over variables, q(z) against p(z)."""
    q_use, p_use = class_usage(s.z, latent), class_usage(prior_z, latent)
    return {
        "classes": int(q_use.shape[-1]),
        "usage_perplexity": perplexity(q_use.mean(0)),
        "prior_usage_perplexity": perplexity(p_use.mean(0)),
    }


# --- collapse -----------------------------------------------------------------------------
def collapse_check(
    evaluation: dict[str, Any],
    latent: LatentSpace,
    threshold: float = 0.5,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Whether fewer than ``threshold`` of the latent units are in use.

    Args:
        evaluation: :func:`aevb.evaluate.evaluate`'s result (active units, per-dimension KL).
        latent: the model's latent space.
        threshold: the fraction of units below which the latent counts as collapsed.
        usage: :func:`usage_summary` (code latents: codebook entries in use).

    Returns:
        ``{"active", "total", "measure", "threshold", "collapsed", "warning"}``; ``active`` is
        None (and ``collapsed`` False) when the model gives nothing to count.
    """
    active: float | None = None
    total: int | None = None
    measure = "none available"
    if latent.kind == "continuous" and evaluation.get("au_variance") is not None:
        active, total = evaluation["active_units"], len(evaluation["au_variance"])
        measure = "active units, Cov_x E_q[z_j] > 0.01 (Burda et al. 2015)"
    elif latent.kind == "codes" and usage is not None:
        active, total = round(usage["usage_perplexity"], 2), usage["classes"]
        measure = "codebook entries in use, the perplexity of the aggregate code usage"
    elif evaluation.get("kl_per_dim") is not None:
        per_dim = evaluation["kl_per_dim"]
        active, total = sum(k > KL_ACTIVE for k in per_dim), len(per_dim)
        measure = f"latent units with a mean KL above {KL_ACTIVE} nats"
    collapsed = active is not None and total is not None and active < threshold * total
    warning = None
    if collapsed:
        warning = (
            f"posterior collapse: only {active:g} of {total} latent units are in use ({measure}), "
            f"fewer than {threshold:.0%}; the decoder ignores the rest (try KL warm-up "
            "--beta-schedule linear, --free-bits, or a smaller --latent-dim)"
        )
    return {
        "active": active,
        "total": total,
        "measure": measure,
        "threshold": threshold,
        "collapsed": bool(collapsed),
        "warning": warning,
    }


# --- everything evaluate --diagnostics reports ----------------------------------------------
def diagnose(
    model: nn.Module,
    dataset: Dataset,
    split: str,
    evaluation: dict[str, Any],
    *,
    samples: int = 2000,
    collapse_threshold: float = 0.5,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], AggregateSample, Tensor]:
    """ELBO surgery, class usage and the collapse check of one split.

    Returns:
        ``(diagnostics, aggregate sample, prior draws)``: a JSON-able dict (the keys of
        :func:`aggregate_kl`, ``usage`` for discrete latents, ``collapse``), and the draws
        the figure (:func:`aevb.figures.plot_posterior_vs_prior`) shows.
    """
    s = aggregate_posterior_sample(
        model, dataset, split, samples, batch_size=batch_size, seed=seed, progress=progress
    )
    context = None
    if model.conditional:  # the prior's marginal over this split's contexts
        n = min(dataset.size(split), PRIOR_DRAWS)
        x, y = dataset.head(split, n), dataset.head_labels(split, n)
        device = next(model.parameters()).device
        context = model.context(x.to(device), None if y is None else y.to(device))
    prior_z = prior_sample(model, max(len(s.z), PRIOR_DRAWS), seed, context)
    out = aggregate_kl(s)
    latent = model.latent
    usage = usage_summary(s, prior_z, latent) if latent.kind != "continuous" else None
    if usage is not None:
        out["usage"] = usage
    out["collapse"] = collapse_check(evaluation, latent, collapse_threshold, usage)
    if out["collapse"]["warning"]:
        logger.warning(out["collapse"]["warning"])
    return out, s, prior_z


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def markdown_lines(d: dict[str, Any]) -> list[str]:
    """The diagnostics section of the evaluation report."""
    lines = [
        "",
        "## Posterior diagnostics",
        "",
        "ELBO surgery (Hoffman & Johnson 2016): rate = I(n; z) + KL(q(z) || p(z)), with q(z) the "
        f"aggregate posterior of the split's {d['n_examples']} examples, from {d['samples']} draws.",
        "",
        "| quantity (nats) | mean | standard error |",
        "| --- | ---: | ---: |",
        f"| KL(q(z) \\|\\| p(z)), aggregate posterior against prior | {d['aggregate_kl']:.4f} | "
        f"{d['aggregate_kl_se']:.4f} |",
        f"| I(n; z), index-code mutual information (at most log N = {d['mi_bound']:.3f}) | "
        f"{d['mutual_information']:.4f} | {d['mutual_information_se']:.4f} |",
        f"| rate at the same draws (the sum) | {d['rate_mc']:.4f} | {d['rate_mc_se']:.4f} |",
        f"| KL, leave-one-out (biased down for the population) | {_num(d['aggregate_kl_loo'])} | "
        f"{_num(d['aggregate_kl_loo_se'])} |",
        f"| I, leave-one-out (biased up for the population) | "
        f"{_num(d['mutual_information_loo'])} | {_num(d['mutual_information_loo_se'])} |",
        "",
        f"Estimator: {d['estimator']}.",
    ]
    usage = d.get("usage")
    if usage:
        lines += [
            "",
            f"Class usage: perplexity {usage['usage_perplexity']:.2f} of {usage['classes']} under "
            f"q(z), {usage['prior_usage_perplexity']:.2f} under the prior.",
        ]
    c = d["collapse"]
    if c["active"] is not None:
        state = "**collapsed**" if c["collapsed"] else "in use"
        lines += [
            "",
            f"Units in use: {c['active']:g} of {c['total']} ({c['measure']}); threshold "
            f"{c['threshold']:.0%}: {state}.",
        ]
    if c["warning"]:
        lines += ["", f"> Warning: {c['warning']}"]
    return lines


# --- traversals -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Traversal:
    """The latents of a traversal figure and what labels them.

    Attributes:
        z: ``[R, S, *z]`` row r sweeps unit ``units[r]`` over S values, the rest held at ``base``.
        base: ``[*z]`` the point every row starts from.
        units: ``[R]`` flat unit indices (latent entries, categorical variables, code positions).
        values: ``[R, S]`` the values swept (latent values, or class / code indices).
        column_labels: S labels (prior quantile levels, or class / code indices).
        row_labels: R labels (unit name and its score).
    """

    z: Tensor
    base: Tensor
    units: Tensor
    values: Tensor
    column_labels: list[str]
    row_labels: list[str]


def num_units(latent: LatentSpace) -> int:
    """Units a traversal can sweep: latent entries, categorical variables or code positions."""
    if latent.kind == "categorical":
        return latent.numel // latent.shape[-1]
    return latent.numel


def unit_name(latent: LatentSpace, u: int) -> str:
    if latent.kind == "categorical":
        return f"variable {u}"
    if latent.kind == "codes":
        w = latent.shape[-1]
        return f"code ({u // w},{u % w})"
    if len(latent.groups) == 1:
        return f"z[{u}]"
    for g, sl in zip(latent.groups, latent.group_slices().values(), strict=True):
        if sl.start <= u < sl.stop:
            return f"{g.name}[{u - sl.start}]"
    return f"z[{u}]"


@torch.no_grad()
def unit_scores(
    model: nn.Module, x: Tensor, y: Tensor | None = None
) -> tuple[Tensor | None, Tensor]:
    """Per unit: the mean KL over ``x`` (where the model's KL has one entry per unit, else
    None) and the spread of the posterior point across ``x`` (variance for continuous
    latents, entropy of the class taken for discrete ones).

    Returns:
        ``(kl [U] or None, spread [U])``.
    """
    latent: LatentSpace = model.latent
    q = model.posterior(x, y)
    u = num_units(latent)
    kl_terms = model.kl(q, model.prior(y))
    kl = None
    if kl_terms is not None and kl_terms.per_dim is not None and kl_terms.per_dim.shape[-1] == u:
        kl = kl_terms.per_dim.double().mean(0).cpu()
    point = q.point()
    if latent.kind == "continuous":
        spread = point.reshape(len(x), -1).double().var(0, unbiased=False).cpu()
    else:
        use = class_usage(point, latent).cpu()  # [U, C]
        spread = torch.tensor([-(p[p > 0] * p[p > 0].log()).sum() for p in use])
    return kl, spread


def rank_units(kl: Tensor | None, spread: Tensor) -> list[int]:
    """Units by KL (when known), then by spread, largest first."""
    keys = [(float(kl[i]) if kl is not None else 0.0, float(spread[i])) for i in range(len(spread))]
    return sorted(range(len(spread)), key=lambda i: keys[i], reverse=True)


@torch.no_grad()
def traversal(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    example: int | None = 0,
    rows: int = 10,
    steps: int = 9,
    seed: int = 0,
) -> Traversal:
    """The latents of a traversal figure (through the model interface only).

    Args:
        model: any aevb model.
        x: ``[B, *event]`` examples: they rank the units and provide the base point.
        example: the example of ``x`` whose posterior point is the base; None: the prior's
            origin (0 under N(0, I), else the mean of prior draws; the most drawn class of
            each unit for discrete latents).
        rows: the most units shown; a latent with more shows the top ``rows`` by KL (then by
            spread across ``x``), one with fewer shows all of them in order.
        steps: columns: prior quantiles in [2.5%, 97.5%] for a continuous unit; for a
            discrete one all classes, or the ``steps`` most used across ``x``.
        seed: of the prior draws (quantiles of a prior that is not N(0, I); the origin).
    """
    latent: LatentSpace = model.latent
    kl, spread = unit_scores(model, x, y)
    n_units = num_units(latent)
    units = list(range(n_units)) if n_units <= rows else rank_units(kl, spread)[:rows]
    units_t = torch.tensor(units, dtype=torch.long)
    q = model.posterior(x, y)
    if example is not None:
        base = q.point()[example]
    else:
        base = _origin(model, latent, seed, y)
    if latent.kind == "continuous":
        levels = torch.linspace(*TRAVERSAL_LEVELS, steps, dtype=torch.float64)
        if latent.standard_normal:
            values = torch.special.ndtri(levels).expand(len(units), steps)
        else:
            draws = prior_sample(model, 4096, seed, y).reshape(4096, -1).double().cpu()
            values = torch.quantile(draws[:, units_t], levels, dim=0).T
        column_labels = [f"{100 * float(v):.3g}%" for v in levels]
    else:
        use = class_usage(q.point(), latent).mean(0).cpu()  # [C] over units and examples
        c = use.numel()
        classes = (
            torch.arange(c) if c <= steps else use.argsort(descending=True)[:steps].sort().values
        )
        values = classes.expand(len(units), len(classes))
        column_labels = [str(int(k)) for k in classes]
    z = traversal_latents(base, units_t.to(base.device), values.to(base.device), latent)
    row_labels = []
    for u in units:
        score = f"KL {float(kl[u]):.2f}" if kl is not None else f"spread {float(spread[u]):.2g}"
        row_labels.append(f"{unit_name(latent, u)}  {score}")
    return Traversal(z, base, units_t, values, column_labels, row_labels)


def _origin(model: nn.Module, latent: LatentSpace, seed: int, context: Tensor | None) -> Tensor:
    device = next(model.parameters()).device
    if latent.kind == "continuous":
        if latent.standard_normal:
            return torch.zeros(latent.shape, device=device)
        return prior_sample(model, 4096, seed, context).float().mean(0)
    draws = prior_sample(model, 1024, seed, context)
    if latent.kind == "codes":
        return draws.reshape(len(draws), -1).mode(0).values.view(latent.shape)
    idx = draws.reshape(len(draws), -1, latent.shape[-1]).argmax(-1).mode(0).values
    return nn.functional.one_hot(idx, latent.shape[-1]).to(draws.dtype).view(latent.shape)
