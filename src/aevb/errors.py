"""Exceptions that aevb raises for bad input.

Every error a user can cause (bad data, a bad option, a missing run) is an
:class:`AevbError` whose message says what is wrong and how to fix it. The CLI prints
it as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class AevbError(Exception):
    """Base class of the errors a user can cause; the message carries the remedy."""


class ConfigError(AevbError, ValueError):
    """An unknown or ill-typed configuration field."""


class DataError(AevbError, ValueError):
    """Data that is missing, malformed, or does not suit the model."""


class CheckpointError(AevbError):
    """A run directory or weights file that is missing, corrupt or inconsistent."""


class DistributedError(AevbError):
    """A distributed run that cannot start or lost one of its processes."""


class TrainingInterrupted(AevbError):
    """Training stopped on Ctrl-C or SIGTERM; the message says what was saved (exit 130)."""

    exit_code = 130


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` reports a failed allocation (a size asked for that does not fit).

    Python and NumPy raise MemoryError; torch's CPU allocator a RuntimeError ("can't
    allocate memory"), its CUDA allocator ``torch.OutOfMemoryError`` (a RuntimeError).
    """
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "can't allocate memory" in text or type(e).__name__ == "OutOfMemoryError"
    )
