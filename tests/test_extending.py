"""The README's "Extending aevb" example runs as written, in a fresh interpreter.

It registers a likelihood, an objective with its own config section, a prior and a model;
a fresh process keeps those registrations out of the other tests' registries.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_extending_example_runs(tmp_path):
    text = README.read_text()
    section = text[text.index("## Extending aevb") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    neg_elbo, log_px, groups = proc.stdout.strip().split(" ", 2)
    assert float(neg_elbo) > 0 and float(log_px) < 0 and "'z'" in groups
    assert (tmp_path / "runs/extending-example/model.safetensors").is_file()
