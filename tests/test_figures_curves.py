"""The training-curves figure shows the end of a long run, not the first epochs' spike."""

from __future__ import annotations

import math

from aevb import figures


def test_robust_ylim_leaves_out_the_transient_and_keeps_the_tail():
    values = [300.0, 150.0] + [100.0 - 0.1 * i for i in range(100)] + [math.nan, math.inf]
    lo, hi = figures.robust_ylim(values)
    tail = [v for v in values[2:] if math.isfinite(v)]
    assert lo < min(tail) and hi >= max(tail[5:])  # the tail is inside the limits
    assert hi < 150.0  # the spike is outside
    assert figures.robust_ylim([math.nan]) is None
    lo, hi = figures.robust_ylim([5.0] * 40)  # a flat curve still gets a range
    assert lo < 5.0 < hi


def test_plot_curves_of_a_long_run_writes_the_figure(tmp_path):
    metrics = [
        {
            "step": 100 * i,
            "train_neg_elbo": 200 / (i + 1) + 90,
            "valid_neg_elbo": 200 / (i + 1) + 95,
            "train_recon_nll": 70.0,
            "valid_recon_nll": 72.0,
            "train_kl": 20.0,
            "valid_kl": None,
        }
        for i in range(60)
    ]
    path = figures.plot_curves(metrics, tmp_path / "curves.png")
    assert path.is_file() and path.stat().st_size > 1000
