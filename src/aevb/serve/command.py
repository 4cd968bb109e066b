"""The ``aevb serve RUN`` sub-command: its options and what it runs.

Kept apart from :mod:`.app` so that ``aevb --help`` does not import the web server.
"""

from __future__ import annotations

import argparse
import ipaddress
import warnings

from ..errors import AevbError


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``aevb serve``."""
    p.add_argument("run", metavar="RUN", help="run directory written by `aevb train`")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: fastest for small models; more for large conv nets)",
    )
    p.add_argument(
        "--max-points", type=int, default=5000, help="examples per split on the latent map"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the run, bind the port, print the URL and serve until Ctrl-C."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise AevbError(
            "aevb serve needs starlette and uvicorn: pip install 'starlette>=0.37' 'uvicorn>=0.29'"
        ) from None
    import torch

    from .app import bind, create_app, make_server
    from .explorer import Explorer

    if args.threads < 1 or args.max_points < 2:
        raise AevbError("--threads must be >= 1 and --max-points >= 2")
    if not 0 <= args.port <= 65535:
        raise AevbError(f"--port must be in [0, 65535], got {args.port}")
    torch.set_num_threads(args.threads)
    explorer = Explorer(args.run, device=args.device, max_map_points=args.max_points)
    if not _is_loopback(args.host):
        warnings.warn(
            f"serving on {args.host}: anyone who can reach it can use the explorer (no login)",
            stacklevel=1,
        )
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"aevb serve: exploring {args.run} at http://{shown}:{port}/ (Ctrl-C to stop)", flush=True
    )
    if explorer.data_error:
        warnings.warn(f"{explorer.data_error}; the latent map is off", stacklevel=1)
    make_server(create_app(explorer), sock).run(sockets=[sock])
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
