"""`aevb evaluate` end to end: the JSON contract of the likelihood report."""

from __future__ import annotations

import json


def test_cli_evaluate_json_keys(tmp_path, capsys):
    from aevb.cli import main

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--steps",
                "5",
                "--hidden",
                "16",
                "--figures",
                "false",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    report = tmp_path / "report.md"
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--split",
                "test",
                "--k",
                "20",
                "--naive",
                "10",
                "--json",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)
    for key in (
        "log_px_iw",
        "neg_elbo",
        "rate",
        "distortion",
        "gap",
        "log_px_naive",
    ):
        assert key in res and f"{key}_se" in res
    for key in ("active_units", "k", "n_examples", "kl_per_dim"):
        assert key in res
    assert res["k"] == 20 and res["n_examples"] == 180
    # grey digits under a Bernoulli: a cross-entropy, not a probability, so no bits/dim
    assert "bits_per_dim" not in res and "not binary" in res["bits_per_dim_note"]
    assert res["log_px_iw"] <= -res["neg_elbo"] + 5 * res["gap_se"] + 1.0
    assert "importance-sampled" in report.read_text()
    # what computed it, for a reader wondering about its speed
    assert res["compute"].startswith("cpu, 1 PyTorch thread(s); native kernels used (")
    assert f"Computed on {res['compute']}." in report.read_text()
