"""Files of the named datasets: where they live, how they are fetched, how they are checked.

Cache folder, first that is set: ``--data-dir DIR`` (``DataConfig.data_dir``), the
environment variable ``AEVB_DATA``, ``~/.cache/aevb``. Each dataset keeps its files in a
sub-folder (``DIR/binarized_mnist/``, ``DIR/mnist/``, ...); a folder filled by hand is used
as is, provided its files pass the checksum.

Every file is checked against its published SHA-256 before it is used, whether it was
already there or has just been downloaded. A file published as ``X.gz`` may also be kept
decompressed as ``X`` (and a file published as ``X`` may be kept gzipped as ``X.gz``):
the check is then made on the decompressed bytes, for which a SHA-256 is pinned.

Downloads stream into a temporary file in the target folder, hashing as they go; the
file is fsync'ed and renamed into place only when its length and checksum are right,
so an interrupted or corrupt download never leaves anything under the final name.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from ..errors import DataError

logger = logging.getLogger(__name__)

ENV_VAR = "AEVB_DATA"
CHUNK = 1 << 20
TIMEOUT_S = 60.0


def data_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of the named datasets: ``data_dir``, else ``$AEVB_DATA``, else ~/.cache/aevb."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return Path(env).expanduser()
        except RuntimeError:  # ~user of no such user
            raise DataError(f"${ENV_VAR}={env}: there is no such user's home folder") from None
    return Path.home() / ".cache" / "aevb"


@dataclass(frozen=True)
class RemoteFile:
    """One published file of a dataset.

    Attributes:
        name: file name as published (and as saved), e.g. ``train-images-idx3-ubyte.gz``.
        urls: the official location first, then mirrors serving the same bytes.
        sha256: SHA-256 of the file as published; None where no checksum is published
            (the file is then accepted on its structure and its observed hash is logged).
        size: length in bytes as published, where known.
        content_sha256: for a ``.gz`` file, SHA-256 of its decompressed content (lets a
            decompressed copy, or a re-compressed one, be verified); None if unknown.
    """

    name: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None = None
    content_sha256: str | None = None

    @property
    def gzipped(self) -> bool:
        return self.name.endswith(".gz")

    def variants(self) -> list[str]:
        """File names accepted in the folder, preferred first."""
        if self.gzipped:
            return [self.name, self.name[:-3]]
        return [self.name, self.name + ".gz"]

    def accepts(self, file_name: str, file_sha: str, content_sha: str) -> bool:
        """Whether a file called ``file_name`` with these hashes is this published file."""
        if self.sha256 is None:
            return True
        raw_sha = self.content_sha256 if self.gzipped else self.sha256
        if file_name == self.name and file_sha == self.sha256:
            return True
        return raw_sha is not None and content_sha == raw_sha

    def expected(self, file_name: str) -> str:
        """The checksum(s) a file of this name must have, for error messages."""
        if file_name == self.name:
            alt = f" (or decompressed {self.content_sha256})" if self.content_sha256 else ""
            return f"{self.sha256}{alt}"
        raw = self.content_sha256 if self.gzipped else self.sha256
        return f"{raw} (of the decompressed bytes)"


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes the bytes read through it."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha = hashlib.sha256()
        self.n = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        self.sha.update(data)
        self.n += n
        return n


def read_hashed(path: Path) -> tuple[bytes, str, str]:
    """Read ``path`` (decompressing a ``.gz``) in one pass.

    Returns:
        ``(content, sha256 of the file's bytes, sha256 of the content)``.

    Raises:
        DataError: a truncated or corrupt gzip stream.
    """
    content_sha = hashlib.sha256()
    parts: list[bytes] = []
    with open(path, "rb") as f:
        raw = _HashingReader(f)
        stream: io.RawIOBase | gzip.GzipFile = raw
        if path.name.endswith(".gz"):
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        try:
            while chunk := stream.read(CHUNK):
                content_sha.update(chunk)
                parts.append(chunk)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(
                f"{path} is a truncated or corrupt gzip file ({e}); delete it and download it again"
            ) from None
        # Hash whatever follows the last gzip member too, so the file hash covers every byte.
        while raw.read(CHUNK):
            pass
    return b"".join(parts), raw.sha.hexdigest(), content_sha.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(remote: RemoteFile, path: Path) -> str:
    """Check the file ``path`` (one of ``remote.variants()``) against ``remote``.

    Returns:
        the SHA-256 of the file's bytes.

    Raises:
        DataError: the checksum is wrong.
    """
    if path.name == remote.name:
        file_sha = sha256_file(path)
        if remote.sha256 is None or file_sha == remote.sha256 or not remote.gzipped:
            check(remote, path, file_sha, file_sha)
            return file_sha
    _, file_sha, content_sha = read_hashed(path)
    check(remote, path, file_sha, content_sha)
    return file_sha


def find_verified(remote: RemoteFile, folder: Path) -> Path | None:
    """The verified copy of ``remote`` in ``folder``, or None when there is none.

    Raises:
        DataError: a copy exists but its checksum is wrong.
    """
    for name in remote.variants():
        path = folder / name
        if path.is_file():
            verify(remote, path)
            return path
    return None


def check(remote: RemoteFile, path: Path, file_sha: str, content_sha: str) -> None:
    """Raise :class:`DataError` unless the hashes of ``path`` are those of ``remote``."""
    if remote.sha256 is None:  # warned about at download; the loader checks the structure
        logger.info("%s has no published checksum (sha256 %s)", path, file_sha)
        return
    raw_sha = remote.content_sha256 if remote.gzipped else remote.sha256
    if path.name != remote.name and raw_sha is None:
        raise DataError(
            f"{path}: no checksum of the decompressed file is published, so it cannot be "
            f"verified; keep the official {remote.name} there instead (from {remote.urls[0]})"
        )
    if not remote.accepts(path.name, file_sha, content_sha):
        got = file_sha if path.name == remote.name else content_sha
        raise DataError(
            f"{path} fails its checksum (sha256 {got}, expected {remote.expected(path.name)}): "
            "it is corrupt or not the official file; delete it to download it again from "
            f"{remote.urls[0]}"
        )


def read_verified(
    remote: RemoteFile, folder: Path, progress: bool | None = None
) -> tuple[bytes, str]:
    """The checked content of ``remote`` (decompressed if gzipped), downloading it if absent.

    Existing files are read, decompressed and hashed in a single pass.

    Returns:
        ``(content, sha256 of the content)``: the decompressed bytes and their hash.
    """
    path = next((folder / n for n in remote.variants() if (folder / n).is_file()), None)
    if path is None:
        path = fetch(remote, folder, progress)
    content, file_sha, content_sha = read_hashed(path)
    check(remote, path, file_sha, content_sha)
    return content, content_sha


def fetch(remote: RemoteFile, folder: Path, progress: bool | None = None) -> Path:
    """The path of a verified copy of ``remote`` in ``folder``; downloads it when absent.

    Args:
        remote: the published file.
        folder: the dataset's folder in the cache.
        progress: show a progress bar (None: only on a terminal).

    Raises:
        DataError: offline (naming the URL and the exact target path), a truncated
            download, a checksum mismatch, or a folder that cannot be written.
    """
    found = find_verified(remote, folder)
    if found is not None:
        return found
    target = folder / remote.name
    _check_writable(folder, remote.urls[0], target)
    errors: list[str] = []
    offline = True
    for url in remote.urls:
        try:
            download(url, target, remote.sha256, remote.size, progress)
            return target
        except _NetworkError as e:
            errors.append(f"{url}: {e}")
        except DataError as e:  # truncated or wrong bytes: nothing saved; try the next mirror
            if len(remote.urls) == 1:
                raise
            offline = False
            errors.append(str(e))
    if not offline:
        raise DataError(f"no source of {remote.name} gave the official file: {'; '.join(errors)}")
    raise DataError(
        f"cannot download {remote.name} ({'; '.join(errors)}). Offline? Fetch {remote.urls[0]} "
        f"yourself and save it as {target} (or point --data-dir / ${ENV_VAR} at a folder holding "
        f"{folder.name}/{remote.name})"
    )


def _check_writable(folder: Path, url: str, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or str(e)
    else:
        # Honour a folder marked read-only even for root (whom os.access lets through).
        if os.access(folder, os.W_OK) and folder.stat().st_mode & 0o222:
            return
        reason = "read-only"
    raise DataError(
        f"{target.name} is missing and {folder} cannot be written ({reason}); set --data-dir "
        f"or ${ENV_VAR} to a writable folder, or download {url} yourself and save it as {target}"
    )


class _NetworkError(Exception):
    """A failure to reach a URL (the next mirror may work)."""


def download(
    url: str,
    target: Path,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool | None = None,
) -> str:
    """Stream ``url`` into ``target`` atomically, checking length and SHA-256 on the way.

    Nothing lands at ``target`` unless every byte arrived and the checksum matches.

    Returns:
        the SHA-256 of the downloaded bytes.

    Raises:
        DataError: truncated download, checksum mismatch, unwritable folder.
        _NetworkError: the URL could not be reached.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
    except OSError as e:
        raise DataError(
            f"cannot write to {target.parent} ({e}); set --data-dir or ${ENV_VAR} to a writable "
            f"folder, or download {url} yourself and save it as {target}"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            digest, n, expected_len = _stream(url, out, target.name, progress)
            out.flush()
            os.fsync(out.fileno())
        if expected_len is not None and n != expected_len:
            raise DataError(
                f"download of {url} was truncated ({n} of {expected_len} bytes); nothing was "
                "saved; run again to retry"
            )
        if size is not None and n != size:
            raise DataError(
                f"download of {url} has {n} bytes, expected {size}: truncated or changed upstream; "
                "run again to retry"
            )
        if sha256 is not None and digest != sha256:
            raise DataError(
                f"download of {url} fails its checksum (sha256 {digest}, expected {sha256}); "
                "nothing was saved; run again to retry"
            )
        if sha256 is None:
            logger.warning("%s has no published checksum; the download has sha256 %s", url, digest)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def _stream(
    url: str, out: BinaryIO, label: str, progress: bool | None
) -> tuple[str, int, int | None]:
    """Copy ``url`` to ``out``; returns (sha256, bytes received, Content-Length or None)."""
    h = hashlib.sha256()
    n = 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                desc=label,
                leave=False,
                disable=None if progress is None else not progress,
            ) as bar:
                while chunk := resp.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise _NetworkError(f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        if n and isinstance(e, (TimeoutError, ConnectionError)):
            raise DataError(
                f"download of {url} was cut off after {n} bytes ({reason}); nothing was saved; "
                "run again to retry"
            ) from None
        raise _NetworkError(str(reason)) from None
    except http.client.HTTPException as e:
        raise DataError(
            f"download of {url} was cut off after {n} bytes ({type(e).__name__}); "
            "nothing was saved; run again to retry"
        ) from None
    return h.hexdigest(), n, expected
