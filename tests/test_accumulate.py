"""The running means of a training epoch: deferred sums equal immediate ones, skipped steps
count for nothing, and the step checks see the same counts."""

from __future__ import annotations

import math

import pytest
import torch

from aevb.accumulate import MeanAccumulator
from aevb.train import SkipLog, _not_finite


def _batches(n: int, b: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        skip = i % 5 == 2
        values = {"x": torch.randn(b, generator=g), "y": 3 * torch.randn(b, generator=g) + 1}
        if skip:  # a skipped step's values may be anything, NaN included
            values["x"][0] = float("nan")
        yield torch.tensor(skip), values


def test_add_later_gives_the_means_and_errors_of_add():
    now, later = MeanAccumulator(), MeanAccumulator()
    for skip, values in _batches(1300):  # more than MAX_PENDING: flushed on the way too
        now.add(mask=~skip, **values)
        later.add_later(skip, **values)
    assert later.n == now.n == 7 * 1300 * 4 // 5
    a, b = now.result(), later.result()
    assert a.keys() == b.keys() and all(math.isfinite(v) for v in b.values())
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-15), k


def test_add_later_is_read_in_order_with_add_and_declare():
    acc = MeanAccumulator().declare(("x", "y"), "cpu")
    batches = list(_batches(6))
    for skip, values in batches[:3]:
        acc.add_later(skip, **values)
    acc.add(mask=~batches[3][0], **batches[3][1])  # an immediate add after deferred ones
    for skip, values in batches[4:]:
        acc.add_later(skip, **values)
    ref = MeanAccumulator()
    for skip, values in batches:
        ref.add(mask=~skip, **values)
    assert acc.n == ref.n == 7 * 5
    assert torch.allclose(acc.sums["x"], ref.sums["x"], rtol=1e-12)
    assert torch.allclose(acc.sq_sums["y"], ref.sq_sums["y"], rtol=1e-12)
    assert [t.shape for t in acc.tensors()] == [t.shape for t in ref.tensors()]


def test_a_batch_size_change_keeps_the_count_right():
    acc = MeanAccumulator()
    acc.add_later(None, x=torch.ones(4))
    acc.add_later(torch.tensor(False), x=torch.full((3,), 2.0))
    acc.add_later(torch.tensor(True), x=torch.full((3,), 5.0))
    assert acc.n == 7
    assert acc.result()["x"] == pytest.approx((4 + 6) / 7)


def test_not_finite_is_the_negation_of_isfinite():
    t = torch.tensor([0.0, -1.5, 3e38, -3e38, 1e-45, float("inf"), -float("inf"), float("nan")])
    assert torch.equal(_not_finite(t), ~torch.isfinite(t))
    assert _not_finite(torch.tensor(float("nan"))).dim() == 0


def test_the_skip_log_counts_skips_and_the_last_run():
    log = SkipLog()
    for flag in [0, 1, 1, 0, 1]:
        log.add(torch.tensor(bool(flag)))
    assert (log.count().skipped, log.run) == (3, 1)
    for flag in [1, 1]:  # a run goes on across checks
        log.add(torch.tensor(bool(flag)))
    assert (log.count().skipped, log.run) == (5, 3)
    log.add(torch.tensor(False))
    assert (log.count().skipped, log.run) == (5, 0)
    assert (log.count().skipped, log.run) == (5, 0)  # nothing new: unchanged
