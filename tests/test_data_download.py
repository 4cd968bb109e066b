"""Downloads and the cache: a local HTTP server on 127.0.0.1 stands in for the official sites.

Checks: the cache-folder rules; a good download lands atomically with the right bytes; a
checksum mismatch, a truncated body and a dead server each raise one clear DataError and
leave nothing (not even a temporary file) in the cache; mirrors are tried in order;
files already present are verified (plain or gzipped variants); a whole named dataset
(MNIST, IDX) is fetched end to end from the local server.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.config import DataConfig
from aevb.data import data_root, load_dataset
from aevb.data import idx as idx_mod
from aevb.data.download import RemoteFile, download, fetch, read_verified
from aevb.errors import DataError


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Server:
    """Serves ``files[path] = bytes``; ``truncate[path] = n`` sends only n bytes of them."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: server.truncate.get(self.path, len(body))])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- where the cache is -----------------------------------------------------------------
def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("AEVB_DATA", raising=False)
    assert data_root(None) == Path.home() / ".cache" / "aevb"
    monkeypatch.setenv("AEVB_DATA", str(tmp_path / "env"))
    assert data_root(None) == tmp_path / "env"
    assert data_root(str(tmp_path / "flag")) == tmp_path / "flag"  # --data-dir wins


# --- downloading ------------------------------------------------------------------------
def test_download_verifies_and_lands_atomically(server, tmp_path):
    body = bytes(range(256)) * 1000
    server.files["/a.bin"] = body
    target = tmp_path / "cache" / "a.bin"
    digest = download(server.url + "/a.bin", target, sha(body), len(body), progress=False)
    assert digest == sha(body)
    assert target.read_bytes() == body
    assert listing(target.parent) == ["a.bin"]  # no temporary file left behind


def test_checksum_mismatch_saves_nothing(server, tmp_path):
    server.files["/a.bin"] = b"tampered bytes"
    remote = RemoteFile("a.bin", (server.url + "/a.bin",), sha(b"official bytes"))
    with pytest.raises(DataError, match="fails its checksum.*nothing was saved") as e:
        fetch(remote, tmp_path, progress=False)
    assert "\n" not in str(e.value)
    assert listing(tmp_path) == []


def test_truncated_download_saves_nothing(server, tmp_path):
    body = b"x" * 100_000
    server.files["/a.bin"] = body
    server.truncate["/a.bin"] = 60_000  # Content-Length says 100,000; the connection closes early
    remote = RemoteFile("a.bin", (server.url + "/a.bin",), sha(body))
    with pytest.raises(DataError, match="truncated|cut off"):
        fetch(remote, tmp_path, progress=False)
    assert listing(tmp_path) == []


def test_size_is_checked_when_no_length_is_sent(server, tmp_path):
    server.files["/a.bin"] = b"12345"
    with pytest.raises(DataError, match="has 5 bytes, expected 9"):
        download(server.url + "/a.bin", tmp_path / "a.bin", None, 9, progress=False)
    assert listing(tmp_path) == []


def test_offline_error_names_url_and_target(tmp_path):
    url = dead_url()
    remote = RemoteFile("file.bin", (url,), sha(b"x"))
    with pytest.raises(DataError) as e:
        fetch(remote, tmp_path / "ds", progress=False)
    msg = str(e.value)
    assert f"Fetch {url} yourself and save it as {tmp_path / 'ds' / 'file.bin'}" in msg
    assert "\n" not in msg
    assert listing(tmp_path / "ds") == []


def test_mirrors_are_tried_in_order(server, tmp_path):
    body = b"the official bytes"
    server.files["/mirror/a.bin"] = body
    urls = (server.url + "/gone/a.bin", server.url + "/mirror/a.bin")
    remote = RemoteFile("a.bin", urls, sha(body))
    assert fetch(remote, tmp_path, progress=False) == tmp_path / "a.bin"
    assert server.hits == ["/gone/a.bin", "/mirror/a.bin"]
    # Second call: the cached copy is verified and used, no request is made.
    assert fetch(remote, tmp_path, progress=False) == tmp_path / "a.bin"
    assert len(server.hits) == 2


def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        remote = RemoteFile("a.bin", ("http://127.0.0.1:9/a.bin",), sha(b"x"))
        with pytest.raises(DataError, match="cannot be written.*save it as"):
            fetch(remote, folder, progress=False)
    finally:
        folder.chmod(0o755)


# --- files already in the cache ---------------------------------------------------------
def test_existing_file_is_verified(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"corrupted")
    remote = RemoteFile("a.bin", ("http://127.0.0.1:9/a.bin",), sha(b"official"))
    with pytest.raises(DataError, match=r"a\.bin fails its checksum.*delete it"):
        fetch(remote, tmp_path, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == b"corrupted"  # a user's file is never deleted


def test_plain_file_may_be_kept_gzipped(tmp_path):
    content = b"0 1\n" * 1000
    (tmp_path / "a.amat.gz").write_bytes(gzip.compress(content))
    remote = RemoteFile("a.amat", ("http://127.0.0.1:9/a.amat",), sha(content))
    got, content_sha = read_verified(remote, tmp_path, progress=False)
    assert got == content and content_sha == sha(content)
    # a gzip of other bytes is rejected on the decompressed checksum
    (tmp_path / "a.amat.gz").write_bytes(gzip.compress(content + b"1"))
    with pytest.raises(DataError, match="of the decompressed bytes"):
        read_verified(remote, tmp_path, progress=False)


def test_gz_file_may_be_kept_decompressed_only_if_pinned(tmp_path):
    content = b"\x00\x00\x08\x01" + b"\x00\x00\x00\x02" + b"\x07\x09"
    gz = gzip.compress(content, mtime=0)
    pinned = RemoteFile("f.gz", ("http://127.0.0.1:9/f.gz",), sha(gz), len(gz), sha(content))
    unpinned = RemoteFile("f.gz", ("http://127.0.0.1:9/f.gz",), sha(gz), len(gz), None)
    (tmp_path / "f").write_bytes(content)
    assert read_verified(pinned, tmp_path, progress=False)[0] == content
    with pytest.raises(DataError, match="cannot be verified; keep the official f.gz"):
        read_verified(unpinned, tmp_path, progress=False)
    # the published .gz itself, and a re-compressed copy of the right content, both pass
    (tmp_path / "f").unlink()
    (tmp_path / "f.gz").write_bytes(gz)
    assert read_verified(unpinned, tmp_path, progress=False)[0] == content
    (tmp_path / "f.gz").write_bytes(gzip.compress(content, mtime=123))
    assert read_verified(pinned, tmp_path, progress=False)[0] == content


def test_truncated_gzip_in_cache_is_a_clear_error(tmp_path):
    content = np.random.default_rng(0).integers(0, 2, 20_000, dtype=np.uint8).tobytes()
    gz = gzip.compress(content)
    (tmp_path / "f.gz").write_bytes(gz[: len(gz) // 2])
    remote = RemoteFile("f.gz", ("http://127.0.0.1:9/f.gz",), sha(gz), None, sha(content))
    with pytest.raises(DataError, match="truncated or corrupt gzip"):
        read_verified(remote, tmp_path, progress=False)


# --- a named dataset, end to end --------------------------------------------------------
def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x00000803 (images) or 0x00000801 (labels)."""
    header = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def test_mnist_downloads_from_local_server(server, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 50, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
    }
    files = {}
    for stem, a in arrays.items():
        raw = idx_bytes(a)
        gz = gzip.compress(raw, mtime=0)
        server.files[f"/mnist/{stem}.gz"] = gz
        files[f"{stem}.gz"] = (len(gz), sha(gz), sha(raw))
    fake = idx_mod.IdxSource(
        "mnist",
        "mnist",
        (server.url + "/dead/", server.url + "/mnist/"),
        files,
        idx_mod.MNIST.classes,
        "test",
    )
    monkeypatch.setattr(idx_mod, "MNIST", fake)
    ds = load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), valid_fraction=0.2))
    assert listing(tmp_path / "mnist") == sorted(files)
    assert (ds.size("train"), ds.size("valid"), ds.size("test")) == (40, 10, 12)
    test_images = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().div(255)
    assert torch.equal(ds.tensor("test"), test_images.unsqueeze(1))
    assert torch.equal(ds.labels("test"), torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    # train + valid are the official training images, each exactly once
    seen = torch.cat([ds.tensor("train"), ds.tensor("valid")]).flatten(1)
    want = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().div(255).flatten(1)
    assert len(seen) == len(want)
    assert torch.equal(torch.unique(seen, dim=0), torch.unique(want, dim=0))
    # reloading uses the verified cache, without the network
    n_hits = len(server.hits)
    load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path)))
    assert len(server.hits) == n_hits
