"""Files written atomically: a temporary file beside the target, flushed to disk, renamed
over it, so a reader (or a crash) sees the old file or the new one, never a part.

The bottom layer of aevb's writes (checkpoints, reports, the data cache, the native
kernels' cache): standard library only, so any module may use it without an import cycle.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    """The permissions an ordinary ``open(path, "w")`` would give (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename), with
    permissions ``mode`` (default: what ``open(path, "w")`` would give)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
