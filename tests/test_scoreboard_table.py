"""The README's scoreboard table is generated from the results file: the newest line of each
row, never a check run, each number with its K, and lines of the first runner kept."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _scoreboard():
    spec = importlib.util.spec_from_file_location("scoreboard", ROOT / "benchmarks/scoreboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _line(row: str, nll: float, **kw) -> dict:
    base = dict(
        row=row,
        model="m",
        schedule="s",
        published="88.71",
        published_ref="ref",
        k=5000,
        test_neg_log_px=nll,
        test_neg_log_px_se=0.25,
        test_neg_elbo=nll + 5,
        train_subset_neg_log_px=nll - 3,
        active_units=14,
        active_units_per_group=None,
        epochs_trained=10,
        best_epoch=9,
        stopped_early=False,
        train_wall_s=7200.0,
        train_cpu_s=3600.0,
        machine="cpu, 1 threads",
        commit="abc",
        date="d",
        curve=[{"epoch": 5, "train_hours": 0.5, "test_neg_log_px": nll + 1, "k": 1000}],
        valid_curve=[[1, 120.0], [2, 100.0]],
    )
    return {**base, **kw}


def test_table_shows_the_newest_line_of_each_row_and_never_a_check(tmp_path):
    sb = _scoreboard()
    results = [
        _line("vae1", 95.0),
        _line("vae1", 89.75),
        _line("vae1", 80.0, check=True),  # a --epochs check: kept in the file, not shown
        _line("gumbel", 90.62, k=1000, train_cpu_s=None, active_units=None),
        {
            "model": "burda",
            "epochs": 40,
            "batch_size": 100,
            "lr": 0.001,
            "k": 5000,
            "test_log_px_iw": -93.98,
            "test_log_px_iw_se": 0.26,
            "test_neg_elbo": 99.71,
            "active_units": 15,
            "latent_dim": 50,
            "train_seconds": 2104.6,
            "machine": "CPU",
            "torch": "2.13.0+cpu",
        },
    ]
    text = sb.table(results)
    assert "**89.75** ± 0.25 (5000)" in text and "95.00" not in text and "80.00" not in text
    assert "**90.62** ± 0.25 (1000)" in text and "CPU time not recorded" in text
    assert "n/a (discrete z)" in text and "1 thread," in text
    assert "`burda` (first runner)" in text and "**93.98**" in text
    assert "0.50 h → 90.75" in text  # the curve of the shown line
    path = sb.plot(results, tmp_path / "scoreboard.png")
    assert path.stat().st_size > 1000
