"""The run directory: what a folder holds, who is writing it, and where outputs may go.

Promises this module keeps (see docs/promises.md):

* ``aevb train --out DIR`` writes only into a new or empty folder, or into an unfinished
  aevb run of the same configuration (which it continues); anything else is refused
  before a byte is written (:func:`inspect` + :func:`claim`).
* One process trains a run at a time: :class:`RunLock` is an ``flock`` on ``DIR/.aevb.lock``
  held for the whole command and released on any exit (the kernel drops it when a process
  dies, so a lock file left by a killed process is stale and is taken over). A second
  ``aevb train`` on the same folder fails at once with "DIR is in use by process N".
* Temporary files of a write that was killed (``.NAME.*.tmp``) are removed by the next
  process that holds the lock.
* Output files named by the user are checked before the work that produces them
  (:func:`check_output_file`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"
METRICS_FILE = "metrics.jsonl"
FIGURES_DIR = "figures"
SNAPSHOTS_DIR = "snapshots"
LOCK_FILE = ".aevb.lock"


class RunInUseError(CheckpointError):
    """Another process holds the run directory's lock."""


@dataclass(frozen=True)
class RunStatus:
    """What a folder holds, as far as ``aevb train`` is concerned.

    Attributes:
        kind: ``new`` (missing or empty), ``unfinished`` (an aevb run with no model file),
            ``finished`` (an aevb run with ``model.safetensors``), or ``foreign`` (other files).
        config: the stored ``config.json`` of an aevb run (as a dict), else None.
        step: the step of the stored training state (None if there is none).
    """

    kind: str
    config: dict[str, Any] | None = None
    step: int | None = None


def _own_file(name: str) -> bool:
    """Files aevb itself leaves in a run while it works (lock, temporaries)."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))


def inspect(run_dir: Path) -> RunStatus:
    """Classify ``run_dir`` without changing it."""
    if not run_dir.exists():
        return RunStatus("new")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file; give a directory for the run")
    names = [p.name for p in run_dir.iterdir() if not _own_file(p.name)]
    if not names:
        return RunStatus("new")
    config = _read_json(run_dir / CONFIG_FILE)
    if not isinstance(config, dict) or "aevb_version" not in config:
        return RunStatus("foreign")
    step = state_step(run_dir)
    if (run_dir / MODEL_FILE).exists():
        return RunStatus("finished", config, step)
    return RunStatus("unfinished", config, step)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


def state_step(run_dir: Path) -> int | None:
    """The step recorded in a run's training state (read from the safetensors header only)."""
    path = run_dir / STATE_FILE
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                return None
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"]["aevb"])
        return int(meta["progress"]["step"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None


def refusal(run_dir: Path, status: RunStatus) -> str | None:
    """Why ``aevb train --out run_dir`` must not write there (None if it may)."""
    if status.kind == "foreign":
        return (
            f"{run_dir} is not empty and holds no aevb run; nothing was written: give a new or "
            "empty directory with --out"
        )
    if status.kind == "finished":
        return (
            f"{run_dir} already holds a finished run; nothing was written: pick another --out, "
            f"or train it longer with `aevb train --resume {run_dir} --epochs N`"
        )
    return None


# --- the lock -----------------------------------------------------------------------------
class RunLock:
    """An exclusive ``flock`` on ``RUN/.aevb.lock`` naming its holder (pid, host, time)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunInUseError` at once (no waiting)."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:  # a folder or a dangling link of that name, a read-only folder
                raise CheckpointError(
                    f"cannot lock {self.run_dir}: {self.path} cannot be opened ({e.strerror}); "
                    "remove it if it is not a file"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                pid = holder[0] if holder else "?"
                raise RunInUseError(
                    f"{self.run_dir} is in use by process {pid}; wait for it to finish, or stop "
                    "it (Ctrl-C saves its state) and try again"
                ) from None
            # The holder we waited on may have unlinked the file we opened: lock the live one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.time():.0f}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one else can
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Delete ``.NAME.*.tmp`` files that a killed write left (call while holding the lock)."""
    removed = []
    for folder in (run_dir, run_dir / FIGURES_DIR, run_dir / SNAPSHOTS_DIR):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                p.unlink(missing_ok=True)
                removed.append(str(p))
    return removed


@dataclass
class Claim:
    """A run directory held by this process for ``aevb train``.

    Attributes:
        run_dir: the folder.
        status: what it held when claimed.
        created: whether claiming created the folder (then a failure before the first
            write removes it again).
        top: the outermost folder claiming created (``run_dir`` or one of its parents).
    """

    run_dir: Path
    status: RunStatus
    created: bool
    lock: RunLock
    top: Path | None = None

    def release(self, failed: bool = False) -> None:
        """Release the lock; after a failure, remove what a new run wrote before its first
        checkpoint (its config and metrics: nothing to continue from), then the folders this
        claim created if they are empty."""
        if failed and self.status.kind == "new" and not (self.run_dir / STATE_FILE).exists():
            for name in (CONFIG_FILE, METRICS_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        self.lock.release()
        if failed and self.created:
            _rmdir_quietly(self.run_dir, self.top)  # only succeeds when nothing else was written


def claim(run_dir: Path, resume: bool) -> Claim:
    """Create (if needed) and lock ``run_dir`` for training; refuse what must not be touched.

    Raises:
        ConfigError / CheckpointError: a foreign or finished folder (when not resuming), a
            missing run (when resuming), a folder in use by another process.
    """
    if str(run_dir) in ("", "."):
        raise ConfigError("--out must name a directory for the run (not the current directory)")
    run_dir = Path(run_dir)
    if resume and not (run_dir / CONFIG_FILE).is_file():
        what = "does not exist" if not run_dir.exists() else "holds no aevb run (no config.json)"
        raise CheckpointError(f"cannot resume {run_dir}: it {what}")
    before = inspect(run_dir)  # refuse early, before creating or locking anything
    if not resume and (why := refusal(run_dir, before)):
        raise ConfigError(why)
    created = not run_dir.exists()
    top = run_dir  # the outermost folder that mkdir creates
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the run directory {run_dir}: {e.strerror}") from None
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except BaseException:
        if created:
            _rmdir_quietly(run_dir, top)
        raise
    status = inspect(run_dir)  # again, now that no one else can change it
    if not resume and (why := refusal(run_dir, status)):
        lock.release()
        raise ConfigError(why)
    remove_stale_temporaries(run_dir)
    return Claim(run_dir, status, created, lock, top)


def _rmdir_quietly(path: Path, top: Path | None = None) -> None:
    """Remove the empty folder ``path``, and its parents up to ``top`` while they are empty."""
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if top is None or path == top or path.parent == path:
            return
        path = path.parent


# --- outputs named by the user --------------------------------------------------------------
def check_output_file(path: str | Path, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that a file can be written at ``path``.

    Raises:
        ConfigError: a directory, a pipe or device, a wrong suffix, a parent that cannot be
            created or written.
    """
    path = Path(path)
    if str(path) in ("", "."):
        raise ConfigError(f"{flag} must name a file")
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} must end in {' or '.join(suffixes)}, got {path.name}")
    parent = path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {existing} (permission denied)")
    if path.exists() and not path.is_file():  # replacing a pipe or a device would be a surprise
        raise ConfigError(
            f"{flag} {path} is not a regular file (a pipe or device); give a file name"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path} exists and is not writable")
    return path
