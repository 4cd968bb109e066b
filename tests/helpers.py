"""Helpers shared by the tests: run the CLI in-process, check one-line errors, compare weights.

Commands run in-process through ``aevb.cli.main`` (starting a Python process costs
seconds); ``run_cli`` returns the exit status and what was printed, so tests assert the
CLI contract (exit codes, one-line errors, the last line of ``train``) directly.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from aevb.cli import main

# The small model every trained fixture uses: fast on one CPU core, still a real run.
SMALL = ["--hidden", "32", "--steps", "20", "--batch-size", "64", "--no-progress"]


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli(*argv: str | Path) -> CliResult:
    """Run ``aevb ARGV`` in this process; argparse's SystemExit becomes an exit status."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(res: CliResult, *fragments: str, code: int | None = None) -> str:
    """A user error: non-zero exit, one line on stderr, no traceback, the given words in it."""
    assert res.code != 0, f"expected failure, got exit 0; stdout: {res.out!r}"
    if code is not None:
        assert res.code == code
    err = res.err.strip()
    assert "Traceback" not in res.err
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got: {res.err!r}"
    for frag in fragments:
        assert frag.lower() in err.lower(), f"{frag!r} not in {err!r}"
    return err


def state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same keys and bit-identical tensors (``torch.equal`` on each)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_model(dtype=None, **fields):
    """A model built from config fields (``latent_dim=3, input_shape=(6,), ...``)."""
    from aevb import RunConfig, build_model

    model = build_model(RunConfig().replace(**fields))
    return model.to(dtype) if dtype is not None else model


# A VQ-VAE small enough for unit tests: 8 x 8 images, 16 codes of 4 numbers, a tiny PixelCNN.
SMALL_VQVAE = dict(
    model="vqvae",
    arch="conv",
    hidden=(8,),
    input_shape=(1, 8, 8),
    likelihood="bernoulli",
    codebook_size=16,
    code_dim=4,
    pixelcnn_channels=8,
    pixelcnn_layers=2,
)


def encode(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu and logvar of a Gaussian model's q(z|x)."""
    q = model.posterior(x)
    return q.mu, q.logvar


def elbo_terms(model, x: torch.Tensor, eps: torch.Tensor, beta: float = 1.0):
    """The ELBO objective's per-example terms with given noise ``[L, B, D]`` (L = len(eps))."""
    from aevb.objectives import ELBO

    return ELBO(samples=len(eps))(model, x, None, eps, {"beta": beta})
