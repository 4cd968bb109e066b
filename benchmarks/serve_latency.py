"""Latency of ``aevb serve``'s decode requests under a bounded load.

Starts ``python -m aevb serve RUN --port 0`` (127.0.0.1, a free port) in a subprocess, then
for each scenario sends ``--requests`` requests from ``--clients`` threads. Each thread
holds one keep-alive connection (``http.client`` from the standard library, as a browser
tab does) and sends its next request when the last one has answered. Latency is the
client's wall time from sending a request to reading the whole response.

Scenarios (one latent each, as the page's sliders and map drags send):
  * ``decode-raw``: ``POST /api/decode`` with a random latent, image as a raw uint8 array;
  * ``decode-png``: the same, image as a PNG data URL (Pillow);
  * ``map-raw``: ``POST /api/map/decode`` with a random map point (PCA or z inverse);
  * ``decode-256``: ``POST /api/decode`` with 256 latents (a batch), raw.

The client threads share the machine with the server: on a small machine the numbers
include that contention. A conditional run (``--run`` of a ``--model cvae``) gets a context
in every request, as the page sends it: a random class, or a random example of the test
split whose observed part a completion model keeps.

Usage:
    python benchmarks/serve_latency.py                      # trains the default run first
    python benchmarks/serve_latency.py --run runs/digits --requests 2000 --clients 4
    python benchmarks/serve_latency.py --write benchmarks/results/serve_latency.md
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name  # noqa: E402  (benchmarks/_machine.py)


def start_server(run: Path, threads: int) -> tuple[subprocess.Popen, str, int]:
    """``aevb serve RUN --port 0``; returns (process, host, port) once it is listening."""
    cmd = [sys.executable, "-m", "aevb", "serve", str(run), "--port", "0"]
    cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # "aevb serve: exploring RUN at http://HOST:PORT/ ..."
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stderr.read()}")
    hostport = line.split("http://")[1].split("/")[0]
    host, port = hostport.rsplit(":", 1)
    return proc, host, int(port)


def get_json(host: str, port: int, path: str) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", path)
    body = json.loads(conn.getresponse().read())
    conn.close()
    return body


def make_body(scenario: str, info: dict, rng: random.Random) -> tuple[str, bytes]:
    """(path, JSON body) of one request of ``scenario``."""
    dim, low, high = info["coord_dim"], info["low"], info["high"]

    def latent() -> list[float]:
        return [rng.uniform(low[j], high[j]) for j in range(dim)]

    if scenario == "map-raw":
        body = {"split": "test", "points": [[rng.uniform(-2, 2), rng.uniform(-2, 2)]]}
        return "/api/map/decode", json.dumps({**body, **context(info, rng)}).encode()
    n = 256 if scenario == "decode-256" else 1
    fmt = "png" if scenario == "decode-png" else "raw"
    body = {"coords": [latent() for _ in range(n)], "format": fmt, **context(info, rng)}
    return "/api/decode", json.dumps(body).encode()


def context(info: dict, rng: random.Random) -> dict:
    """The request fields of a conditional model's context ({} for an unconditional one)."""
    if info.get("conditions_on") == "labels":
        return {"label": rng.randrange(len(info["classes"]))}
    if info.get("conditions_on") == "observed":
        examples = min(info["splits"]["test"], 100)  # all within the map's first examples
        return {"split": "test", "context_index": rng.randrange(examples)}
    return {}


def load_test(
    host: str, port: int, info: dict, scenario: str, requests: int, clients: int, seconds: float
) -> dict:
    """Send ``requests`` requests (or stop after ``seconds``) from ``clients`` threads."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.perf_counter() + seconds

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        headers = {"Content-Type": "application/json"}
        while time.perf_counter() < deadline:
            with lock:
                if next(counter, None) is None:
                    break
            path, body = make_body(scenario, info, rng)  # built before the clock starts
            t0 = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                errors[0] += resp.status != 200
        conn.close()

    t_start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    ms = sorted(x * 1e3 for x in latencies)

    def q(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))]

    return {
        "scenario": scenario,
        "requests": len(ms),
        "errors": errors[0],
        "clients": clients,
        "p50_ms": q(0.50),
        "p95_ms": q(0.95),
        "p99_ms": q(0.99),
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
        "req_per_s": len(ms) / wall,
    }


def warm_up(host: str, port: int, info: dict, n: int = 100) -> None:
    rng = random.Random(-1)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    for scenario in ("decode-raw", "decode-png", "map-raw"):
        for _ in range(n):
            path, body = make_body(scenario, info, rng)
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
    conn.close()


def machine() -> str:
    cpu = cpu_name()
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs (load average {load:.1f} at the start), "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", type=Path, help="run directory (default: train the default run)")
    p.add_argument("--requests", type=int, default=2000, help="requests per scenario")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    p.add_argument("--seconds", type=float, default=60, help="time limit per scenario")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument(
        "--scenarios", nargs="+", default=["decode-raw", "decode-png", "map-raw", "decode-256"]
    )
    p.add_argument("--write", type=Path, help="also write the results as Markdown here")
    args = p.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = args.run
    if run is None:
        run = Path(tmp.name) / "digits"
        cmd = [sys.executable, "-m", "aevb", "train", "--out", str(run), "--no-progress"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    where = machine()
    proc, host, port = start_server(run, args.threads)
    try:
        info = get_json(host, port, "/api/info")
        model_config = get_json(host, port, "/api/summary")["config"]["model"]
        get_json(host, port, "/api/map?split=test")
        warm_up(host, port, info)
        rows = [
            load_test(host, port, info, s, args.requests, args.clients, args.seconds)
            for s in args.scenarios
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    head = "| scenario | requests | errors | p50 ms | p95 ms | p99 ms | max ms | requests/s |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | "
            f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['req_per_s']:.0f} |"
        )
    hidden = "-".join(str(h) for h in model_config["hidden"])
    latent = f"{info['latent']['kind']} latent of {info['coord_dim']} dims"
    latent += f", {model_config['arch']} {hidden}"
    table = "\n".join(lines)
    print(f"machine: {where}\nmodel: {info['model']} on {info['dataset']}, {latent}")
    print(f"{args.clients} client threads, {args.requests} requests per scenario\n{table}")
    if args.write:
        cmd = "python benchmarks/serve_latency.py " + " ".join(sys.argv[1:])
        text = (
            "# `aevb serve` decode latency\n\n"
            f"Command: `{cmd.strip()}`\n\n"
            f"Machine: {where}.\n\n"
            f"Model: {'the default run (`aevb train`)' if args.run is None else args.run}: "
            f"{info['model']} on {info['dataset']}, {latent}; "
            f"server with `--threads {args.threads}`.\n\n"
            f"Load: {args.clients} client threads (stdlib `http.client`, one keep-alive "
            f"connection each, closed loop), {args.requests} requests per scenario; latency is "
            "the client's send-to-last-byte time.\n\n"
            f"{table}\n"
        )
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    tmp.cleanup()


if __name__ == "__main__":
    main()
