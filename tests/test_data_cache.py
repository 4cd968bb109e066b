"""The verified cache of parsed data (``aevb.data.cache``): used when valid, rebuilt otherwise.

A cache is built once from the sources; a second load reads it (the build does not run)
and gives bit-identical data; a changed source, a corrupt or truncated cache file, another
version or a removed JSON rebuilds it; a read-only folder gets no cache; binarized MNIST
from the real files loads the same tensors with and without its cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_named import link_shared

from aevb.config import DataConfig
from aevb.data import binarized_mnist as bm
from aevb.data import load_dataset
from aevb.data.cache import cache_paths, cached_array


class Source:
    """Two source files and a build that parses them (counting its calls)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.paths = [folder / "a.txt", folder / "b.txt"]
        for i, p in enumerate(self.paths):
            p.write_text(" ".join(str(i * 10 + j) for j in range(5)))
        self.builds = 0

    def build(self):
        self.builds += 1
        arr = np.array([[int(v) for v in p.read_text().split()] for p in self.paths], np.int16)
        return arr, self.paths, {"note": "parsed"}

    def load(self, version: str = "v1"):
        return cached_array(self.folder, "demo", version, lambda: list(self.paths), self.build)


def test_built_once_then_read_bit_identical(tmp_path):
    src = Source(tmp_path)
    a, extra = src.load()
    b, extra_b = src.load()
    assert src.builds == 1 and extra == extra_b == {"note": "parsed"}
    assert a.dtype == b.dtype and np.array_equal(a, b)
    npy, meta = cache_paths(tmp_path, "demo")
    assert npy.is_file() and json.loads(meta.read_text())["sources"][0]["name"] == "a.txt"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize(
    "change",
    [
        "source edited",
        "source touched",
        "npy corrupted",
        "npy truncated",
        "json removed",
        "version",
    ],
)
def test_anything_stale_rebuilds(tmp_path, change):
    src = Source(tmp_path)
    src.load()
    npy, meta = cache_paths(tmp_path, "demo")
    version = "v1"
    if change == "source edited":
        src.paths[1].write_text("7 7 7 7 7")
    elif change == "source touched":
        st = src.paths[0].stat()
        os.utime(src.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "npy corrupted":
        data = bytearray(npy.read_bytes())
        data[-1] ^= 1
        npy.write_bytes(bytes(data))
    elif change == "npy truncated":
        npy.write_bytes(npy.read_bytes()[:-3])
    elif change == "json removed":
        meta.unlink()
    else:
        version = "v2"
    arr, _ = src.load(version)
    assert src.builds == 2
    assert np.array_equal(arr, src.build()[0])  # the rebuilt data is the sources' data
    src.builds -= 1
    src.load(version)
    assert src.builds == 2  # and the rebuilt cache is used again


def test_read_only_folder_gets_no_cache(tmp_path):
    src = Source(tmp_path)
    tmp_path.chmod(0o555)
    try:
        src.load()
        src.load()
    finally:
        tmp_path.chmod(0o755)
    assert src.builds == 2 and not cache_paths(tmp_path, "demo")[0].exists()


def test_binarized_mnist_with_and_without_cache_is_identical(tmp_path, monkeypatch):
    data_dir = link_shared(tmp_path, "binarized_mnist")
    config = DataConfig(dataset="binarized-mnist", data_dir=str(data_dir))
    first = load_dataset(config)  # verifies and parses the official files, writes the cache
    npy, meta = cache_paths(data_dir / "binarized_mnist", "binarized_mnist")
    assert npy.is_file() and npy.stat().st_size < 8_000_000  # bit-packed
    monkeypatch.setattr(bm, "read_verified", None)  # the cache alone: no file is read again
    second = load_dataset(config)
    for s in ("train", "valid", "test"):
        assert torch.equal(first.tensor(s), second.tensor(s))
        assert second.tensor(s).dtype == torch.float32
    assert first.info == second.info  # including the official files' SHA-256
