"""``python -m aevb.torchrun ARGS`` is ``torchrun ARGS``, quiet on Ctrl-C.

On Ctrl-C torchrun forwards the signal to its workers (each stops at a step boundary and
rank 0 saves the training state), then raises ``SignalException`` and prints its own
traceback and warnings; here that becomes exit status 130 and nothing more, so the user
sees one line (rank 0's) saying what was saved.
"""

import os
import sys

# torch.distributed.elastic sets each logger's level from LOGLEVEL when it is created: its
# warnings on a Ctrl-C ("Received 2 death signal, ...") would repeat what rank 0 says.
os.environ.setdefault("LOGLEVEL", "ERROR")

from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: E402
from torch.distributed.run import main  # noqa: E402


def _quiet() -> None:
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    _quiet()
    try:
        main(sys.argv[1:])
    except (SignalException, KeyboardInterrupt):
        sys.exit(130)
