"""Scale-out on PyTorch's own engine: torch.distributed + DistributedDataParallel via torchrun.

Launch (one process per GPU on CUDA, backend nccl; processes on CPU use gloo)::

    # one machine, 4 processes (aevb starts torchrun itself, on a free port)
    aevb train --nproc 4 --dataset mnist --epochs 50

    # the same, with torchrun spelled out
    torchrun --standalone --nproc-per-node 4 -m aevb train --dataset mnist --epochs 50

    # two machines with 8 GPUs each: run on both, --node-rank 0 on HOST, 1 on the other
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 --rdzv-id myrun -m aevb train --dataset mnist --out runs/m

A single process is the same code path with world size 1: no process group, no wrapper.

What makes N processes equal one: every rank builds the same model from the same seed and
keeps the same global torch RNG state; each step it draws the noise of the whole global
batch and keeps its own slice, and takes its contiguous slice of the global batch of the
(seed, epoch) permutation (:meth:`aevb.data.Dataset.train_batches`). DDP averages the
gradients, so N processes at global batch B compute the gradient of one process at batch
B, up to float summation order.

Failure: torchrun's agent watches the workers; when one dies it stops the others (SIGTERM)
and exits non-zero with a summary naming the failed rank. A rank that hangs instead makes
the others' next collective time out after ``AEVB_DIST_TIMEOUT_S`` seconds (default 300),
and they stop with a :class:`~aevb.errors.DistributedError` saying so (on nccl, PyTorch's
watchdog aborts the timed-out process instead; torchrun then reports it). Checkpoints are
written atomically by rank 0, so an interrupted run continues from its last one with
``aevb train --resume RUN --nproc N``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import AevbError, ConfigError, DistributedError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "AEVB_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` and its device.

    Attributes:
        rank: global rank (0 writes every file).
        world_size: number of processes (1 without torchrun).
        local_rank: rank on this machine; picks the GPU ``cuda:local_rank``.
        device: this process's device.
        owns_group: whether :func:`init` created the process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def timeout_s() -> float:
    """Seconds a collective waits for the other ranks (``$AEVB_DIST_TIMEOUT_S``, default 300)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw}")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def launched_by_torchrun() -> bool:
    return _env_int("WORLD_SIZE", 1) > 1


def is_main() -> bool:
    """Whether this process is rank 0 (true without a process group or torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return _env_int("RANK", 0) == 0


def rank_tag() -> str:
    """``" on rank 1 of 4"`` under torchrun, ``""`` in a single process (for error lines)."""
    world = _env_int("WORLD_SIZE", 1)
    return f" on rank {_env_int('RANK', 0)} of {world}" if world > 1 else ""


def init(device: torch.device) -> Context:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without those variables (or with WORLD_SIZE 1) nothing is initialised: world size 1. A
    process group initialised by the caller is used as it is. On CUDA each process takes
    ``cuda:LOCAL_RANK`` and the backend is nccl; on CPU it is gloo. Collectives time out
    after :func:`timeout_s` seconds.

    Args:
        device: the device asked for (``cuda`` gets the local rank's index).

    Returns:
        A :class:`Context`; hand it to :func:`teardown` at the end.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
        local = _env_int("LOCAL_RANK", rank)
    else:
        rank, world, owns = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), False
        local = _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < world:
            raise DistributedError(
                f"RANK={rank} is outside 0..WORLD_SIZE-1={world - 1}; launch with torchrun"
            )
    if device.type == "cuda" and device.index is None:
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local} has no GPU: only {torch.cuda.device_count()} are visible; "
                "start at most one process per GPU (--nproc-per-node)"
            )
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
        except (ValueError, RuntimeError) as e:
            raise DistributedError(
                f"cannot join the process group ({e}); launch with `aevb train --nproc N` or "
                "torchrun, which set MASTER_ADDR and MASTER_PORT"
            ) from None
        owns = True
    return Context(rank, world, local, device, owns)


def teardown(ctx: Context) -> None:
    """Leave the process group if :func:`init` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """:func:`init` ... :func:`teardown`; a lost peer becomes a :class:`DistributedError`."""
    ctx = init(device)
    try:
        yield ctx
        barrier()  # leave together: no rank tears down while another still communicates
    except RuntimeError as e:
        if ctx.world_size > 1 and is_communication_failure(e):
            raise DistributedError(
                f"lost contact with the other ranks ({str(e).strip().splitlines()[-1]}): "
                "a rank died or hung. Continue from the last checkpoint with "
                f"`aevb train --resume RUN --nproc {ctx.world_size}`; if a rank is only slow, "
                f"raise {TIMEOUT_ENV} (now {timeout_s():g} s)"
            ) from e
        raise
    finally:
        teardown(ctx)


def is_communication_failure(e: BaseException) -> bool:
    """Whether an exception comes from a collective that timed out or lost its peer."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return any(
        s in text
        for s in (
            "Timed out",
            "timed out",
            "Connection closed by peer",
            "Connection reset by peer",
            "NCCL",
            "gloo",
        )
    )


# --- collectives (no-ops in a single process) -----------------------------------------
def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait until every rank gets here."""
    if not _active():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (a small picklable object)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place over the ranks; returns it."""
    if _active():
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor that is True on every rank if it is True on any (no host sync)."""
    if not _active():
        return flag
    t = flag.to(torch.int32).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.reshape(()).bool()


def any_rank_flag(flag: bool) -> bool:
    """A Python bool agreed by all ranks: True if any rank's is."""
    if not _active():
        return flag
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    return bool(any_rank(torch.tensor(flag, device=device)))


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 of ``values`` ``[B, ...]`` across the whole global batch (all ranks)."""
    if not _active():
        return values.mean(0)
    total = torch.cat([values.sum(0).reshape(-1), values.new_tensor([values.shape[0]])])
    dist.all_reduce(total)
    return (total[:-1] / total[-1]).view(values.shape[1:])


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only; every rank waits for it and gets its result or its error.

    This is how rank 0 writes files: the others do not race ahead of a checkpoint, and a
    failure on rank 0 (a full disk, a run directory already in use) stops every rank with
    the same message instead of leaving them blocked in the next collective.
    """
    if not _active():
        return fn(*args, **kwargs)
    outcome: tuple[bool, Any] = (True, None)
    error: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome = (True, fn(*args, **kwargs))
        except Exception as e:  # handed to the other ranks, then re-raised here
            error = e
            outcome = (False, (type(e).__name__, str(e), isinstance(e, AevbError)))
    ok, value = broadcast(outcome)
    if error is not None:
        raise error
    if not ok:
        name, message, is_aevb = value
        if is_aevb:
            raise DistributedError(f"rank 0 stopped: {message}")
        raise DistributedError(f"rank 0 failed with {name}: {message}")
    return value


# --- the model ------------------------------------------------------------------------
def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (else as it is).

    Save from the unwrapped ``model`` (or :func:`aevb.checkpoint.unwrap`), never from the
    wrapper: its state-dict keys gain ``module.``.
    """
    if ctx.world_size == 1:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def sync_device_rng(device: torch.device) -> None:
    """After a resume on CUDA, give this rank's GPU the RNG state rank 0's GPU was saved with.

    The checkpoint holds the states of rank 0's visible GPUs; rank 0 trained on ``cuda:0``,
    and in this design every rank's generator follows the same stream, so ``cuda:0``'s
    saved state is the right one for ``cuda:LOCAL_RANK`` (whatever world size wrote it).
    """
    if device.type == "cuda" and device.index not in (None, 0):
        torch.cuda.set_rng_state(torch.cuda.get_rng_state(0), device)


def check_batch_size(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the ranks."""
    if batch_size % world_size:
        lower = batch_size - batch_size % world_size
        near = " or ".join(str(b) for b in sorted({max(lower, world_size), lower + world_size}))
        raise ConfigError(
            f"--batch-size {batch_size} (the global batch) does not split over {world_size} "
            f"processes; use a multiple of {world_size}, e.g. {near}"
        )


# --- launching ------------------------------------------------------------------------
def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """``python -m aevb.torchrun --standalone --nproc-per-node N -m aevb ARGV`` (torchrun).

    ``--standalone`` starts a rendezvous on a free local port (no fixed port to collide);
    :mod:`aevb.torchrun` is torchrun with a quiet Ctrl-C.
    """
    return [
        sys.executable,
        "-m",
        "aevb.torchrun",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "aevb",
        *argv,
    ]


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``aevb ARGV`` in ``nproc`` processes on this machine under torchrun.

    Returns:
        torchrun's exit status (0 when every rank succeeded, 130 after Ctrl-C).
    """
    env = dict(os.environ)
    # torchrun would set 1 thread per process; share the cores instead (CPU training).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(torchrun_command(nproc, argv), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached torchrun and the workers as well: they checkpoint and stop, and
        # rank 0 says what was saved.
        proc.wait()
        return 130
