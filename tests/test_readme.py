"""The README's Python example runs as written, so the docs cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "runs/readme-example/model.safetensors").exists()
    assert namespace["samples"].shape == (16, 1, 8, 8)
    assert namespace["q"].summary().shape == (180, 2)
