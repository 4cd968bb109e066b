"""The README's Python example runs as written, so the docs cannot drift from the API."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    section = text[text.index("## Python") : text.index("## Scoreboard")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "runs/readme-example/model.safetensors").exists()
    assert namespace["samples"].shape == (16, 1, 8, 8)
    assert namespace["q"].summary().shape == (180, 2)


def test_readme_paths_stay_inside_the_repository():
    text = README.read_text()
    assert "../" not in text and "/work/" not in text
    for link in re.findall(r"\]\(((?!https?://)[^)#]+)\)", text):
        assert (README.parent / link).exists(), link
