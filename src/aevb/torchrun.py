"""``python -m aevb.torchrun ARGS`` is ``torchrun ARGS``, quiet on Ctrl-C and on user errors.

On Ctrl-C torchrun forwards the signal to its workers (each stops at a step boundary and
rank 0 saves the training state), then raises ``SignalException`` and prints its own
traceback and warnings; here that becomes exit status 130 and nothing more, so the user
sees one line (rank 0's) saying what was saved. When a worker exits with an error, it has
explained itself (``aevb train: error on rank R of N: ...``): torchrun's traceback
and failure report would bury that, so it exits with its status, silently. Only workers
killed by a signal (which could say nothing) get torchrun's report.
"""

import os
import sys

# torch.distributed.elastic sets each logger's level from LOGLEVEL when it is created: its
# warnings on a Ctrl-C ("Received 2 death signal, ...") would repeat what rank 0 says.
os.environ.setdefault("LOGLEVEL", "ERROR")

from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: E402
from torch.distributed.run import main  # noqa: E402


def _quiet() -> None:
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            # CRITICAL: its error line for a failed worker is in the report printed below
            logging.getLogger(name).setLevel(logging.CRITICAL)


if __name__ == "__main__":
    _quiet()
    try:
        main(sys.argv[1:])
    except (SignalException, KeyboardInterrupt):
        sys.exit(130)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        errors = [code for code in codes if code > 0]
        if errors:  # a worker printed its error (torchrun then stopped the others: SIGTERM)
            sys.exit(errors[0])
        print(str(e).strip(), file=sys.stderr)  # workers killed by a signal: which, and how
        sys.exit(1)
