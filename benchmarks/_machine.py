"""What the benchmarks record about the machine they ran on (shared by the scripts here)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Where the benchmarks read binarized MNIST's .amat.gz files: $AEVB_BENCH_DATA if set (on a
# machine where ../shared does not exist, e.g. a lent GPU machine: benchmarks/gpu_check.sh),
# else the project's ../shared/data/binarized_mnist. Without them, synthetic binary data.
BINARIZED_MNIST = Path(
    os.environ.get("AEVB_BENCH_DATA")
    or Path(__file__).resolve().parents[2] / "shared/data/binarized_mnist"
)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
