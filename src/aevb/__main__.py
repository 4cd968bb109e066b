"""``python -m aevb`` is the ``aevb`` command (also the entry point of torchrun's workers)."""

import os
import sys


def _run() -> int:
    try:
        from .cli import main

        return main()
    except KeyboardInterrupt:  # during start-up, before the command could catch it
        print("aevb: interrupted", file=sys.stderr)
        return 130


code = _run()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # A torchrun worker leaves without interpreter shutdown. DistributedDataParallel keeps
    # the Gloo process group (and its threads) alive after destroy_process_group (torch
    # 2.13), and a thread that frees the last collective's tensors during shutdown aborts
    # the process (SIGABRT) after a successful run, about one run in ten on a busy 2-core
    # machine. Every file is written atomically and closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
