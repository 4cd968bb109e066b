"""The "Extending aevb" examples (README.md and docs/extending.md) run as written, each in
a fresh interpreter.

They register a likelihood, an objective (in the docs with its own config section), a
prior and a model; a fresh process keeps those registrations out of the other tests'
registries.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _example(path: Path, heading: str) -> str:
    text = path.read_text()
    section = text[text.index(heading) :]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


@pytest.mark.parametrize(
    "path, heading",
    [(ROOT / "README.md", "## Extending aevb"), (ROOT / "docs/extending.md", "# Extending aevb")],
    ids=["README", "docs"],
)
def test_extending_example_runs(tmp_path, path, heading):
    code = _example(path, heading)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    neg_elbo, log_px, groups = proc.stdout.strip().split(" ", 2)
    assert float(neg_elbo) > 0 and float(log_px) < 0 and "'z'" in groups
    assert (tmp_path / "runs/extending-example/model.safetensors").is_file()
