"""Schedules: hyper-parameters as pure functions of the optimiser step.

The trainer evaluates every schedule at the step it is about to take and passes the
values in (``{"lr": ..., "beta": ..., "tau": ...}``); nothing is stored, so a resumed run
sees exactly the values an uninterrupted one would. :func:`build_schedules` turns a
:class:`~aevb.config.RunConfig` into that map.

References: linear KL warm-up (Bowman et al. 2016, https://arxiv.org/abs/1511.06349;
Sønderby et al. 2016); cyclical annealing (Fu et al. 2019, https://arxiv.org/abs/1903.10145);
Burda et al.'s learning-rate schedule (2015, https://arxiv.org/abs/1509.00519, section 5);
the Gumbel-softmax temperature anneal (Jang et al. 2016, https://arxiv.org/abs/1611.01144).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import RunConfig

Schedule = Callable[[int], float]


def constant(step: int, value: float) -> float:
    return value


def linear_warmup(step: int, start: float, end: float, steps: int) -> float:
    """``start`` at step 0, rising linearly to ``end`` at ``steps``, then ``end``."""
    if step >= steps:
        return end
    return start + (end - start) * step / steps


def cyclical(step: int, start: float, end: float, period: int, ratio: float) -> float:
    """Fu et al.'s cyclical annealing: each ``period`` steps, rise linearly from ``start``
    to ``end`` over the first ``ratio`` of the cycle, then hold ``end``."""
    tau = (step % period) / period
    if tau >= ratio:
        return end
    return start + (end - start) * tau / ratio


def exponential_anneal(step: int, start: float, floor: float, rate: float, every: int) -> float:
    """Jang et al.'s temperature: ``max(floor, start * exp(-rate * t))`` with t the step
    rounded down to a multiple of ``every`` (they update it every N steps)."""
    t = (step // every) * every
    return max(floor, start * math.exp(-rate * t))


# --- learning rate ----------------------------------------------------------------------
BURDA_STAGES = 8  # i = 0..7: 3^i epochs at 10^(-i/7) of the base rate; 3,280 epochs in all


def burda_lr(step: int, lr: float, steps_per_epoch: int) -> float:
    """Burda et al.'s schedule: epochs ``[sum_{j<i} 3^j, sum_{j<=i} 3^j)`` at ``lr * 10^(-i/7)``.

    After the last stage (3,280 epochs) the last rate holds.
    """
    epoch = step // steps_per_epoch
    i = 0
    end = 1
    while epoch >= end and i < BURDA_STAGES - 1:
        i += 1
        end += 3**i
    return lr * 10 ** (-i / 7)


def cosine_lr(step: int, lr: float, total_steps: int, warmup_steps: int, lr_min: float) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then a half cosine from ``lr`` to
    ``lr_min`` at ``total_steps - 1``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


def build_schedules(
    config: RunConfig, steps_per_epoch: int, total_steps: int
) -> dict[str, Schedule]:
    """Every schedule of a run: ``lr`` and ``beta`` always, plus those its variants add
    (a variant section with a ``schedules()`` method, e.g. the Gumbel temperature ``tau``)."""
    tc, oc = config.train, config.objective
    if tc.schedule == "burda":
        lr: Schedule = partial(burda_lr, lr=tc.lr, steps_per_epoch=steps_per_epoch)
    elif tc.schedule == "cosine":
        warmup = round(tc.warmup_epochs * steps_per_epoch)
        lr = partial(
            cosine_lr, lr=tc.lr, total_steps=total_steps, warmup_steps=warmup, lr_min=tc.lr_min
        )
    else:
        lr = partial(constant, value=tc.lr)
    if oc.beta_schedule == "linear":
        beta: Schedule = partial(
            linear_warmup, start=oc.beta_start, end=oc.beta, steps=oc.beta_warmup_steps
        )
    elif oc.beta_schedule == "cyclical":
        beta = partial(
            cyclical,
            start=oc.beta_start,
            end=oc.beta,
            period=oc.beta_period_steps,
            ratio=oc.beta_ratio,
        )
    else:
        beta = partial(constant, value=oc.beta)
    out = {"lr": lr, "beta": beta}
    for section in config.variants.values():
        extra = getattr(section, "schedules", None)
        if extra is not None:
            out.update(extra())
    return out
