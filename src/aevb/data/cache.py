"""A verified cache of parsed data beside a dataset's files: parse and checksum once.

Reading a named dataset from its published files means hashing them (the SHA-256 check)
and parsing them; for binarized MNIST that is 110 MB of text, most of a second at every
start. The first load writes the parsed array to ``<folder>/<name>.cache.npy`` and, beside
it, ``<name>.cache.json``: the source files it was built from (name, size, modification
time, SHA-256 of their verified content) and the SHA-256 of the ``.npy`` file itself.

A later load uses the cache when each recorded source is still the file the loader would
read, with the same size and modification time (a ``stat``), and the ``.npy`` still has
its recorded hash (re-hashed at every load: tens of milliseconds for a few MB). Anything
else (a source replaced, touched or removed, a cache file truncated, edited or missing,
another format version) rebuilds the cache from the verified sources. Both files are
written atomically (temporary file, fsync, rename), the ``.npy`` first: the JSON, which
names the ``.npy``'s hash, is the commit, so a crash between the two leaves a cache that
fails its check and is rebuilt. A folder that cannot be written (or is marked read-only)
is used without a cache. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_bytes

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when what a cache holds changes: older caches are then rebuilt


def cache_paths(folder: Path, name: str) -> tuple[Path, Path]:
    """``(<name>.cache.npy, <name>.cache.json)`` in ``folder``."""
    return folder / f"{name}.cache.npy", folder / f"{name}.cache.json"


def cached_array(
    folder: Path,
    name: str,
    version: str,
    preferred_sources: Callable[[], list[Path | None]],
    build: Callable[[], tuple[np.ndarray, list[Path], dict[str, Any]]],
) -> tuple[np.ndarray, dict[str, Any]]:
    """The array ``build`` makes from a dataset's files, from the cache when it is valid.

    Args:
        folder: the dataset's folder (where its files are).
        name: the cache's file name stem.
        version: what the loader stores (its encoding); a cache of another version is rebuilt.
        preferred_sources: the files the loader would read now, in order (None for one that
            is absent): the cache is valid only if they are the files it was built from.
        build: reads and verifies the sources; returns ``(array, the source paths it read,
            JSON-able extra metadata)`` (e.g. the sources' hashes, for the dataset's info).

    Returns:
        ``(array, extra)``.
    """
    npy, meta_path = cache_paths(folder, name)
    hit = _read_valid(npy, meta_path, version, preferred_sources())
    if hit is not None:
        return hit
    array, sources, extra = build()
    if _writable(folder):
        try:
            _write(npy, meta_path, version, array, sources, extra)
        except OSError as e:  # a full disk, a race with another writer: the data is fine
            logger.info("could not write the cache %s (%s); continuing without it", npy, e)
    return array, extra


def _source_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_valid(
    npy: Path, meta_path: Path, version: str, sources: list[Path | None]
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The cached array and extra metadata, or None when the cache is missing or stale."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != version:
            return None
        if any(p is None for p in sources):
            return None
        if [_source_record(p) for p in sources] != meta["sources"]:  # type: ignore[arg-type]
            return None
        data = npy.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            logger.warning("%s fails its recorded checksum; rebuilding it", npy)
            return None
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return array, meta.get("extra", {})
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def _writable(folder: Path) -> bool:
    """Writable, and not marked read-only (honoured even for root, whom os.access lets through)."""
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def _write(
    npy: Path,
    meta_path: Path,
    version: str,
    array: np.ndarray,
    sources: list[Path],
    extra: dict[str, Any],
) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    data = buf.getvalue()
    atomic_write_bytes(npy, data, mode=0o600)
    meta = {
        "format": FORMAT,
        "version": version,
        "sha256": hashlib.sha256(data).hexdigest(),
        "sources": [_source_record(p) for p in sources],
        "extra": extra,
    }
    atomic_write_bytes(meta_path, mode=0o600, data=(json.dumps(meta, indent=1) + "\n").encode())
