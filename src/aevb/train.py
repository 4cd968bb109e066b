"""The training loop, readable top to bottom.

``train(config, out_dir)`` claims the run directory, builds the data, the model and the
objective from a :class:`RunConfig`, runs Adam for the configured steps or epochs,
validates after every epoch, logs to ``metrics.jsonl``, checkpoints atomically and writes
the model and figures. ``resume(run_dir, steps=N)`` continues a run in place up to N steps
in total, bit-exactly.

The parts, in the order a run meets them: :func:`train` (claim and release the folder),
:func:`_setup` (data, model, optimizer, restored state), :func:`_run` (the epochs),
:func:`_train_epoch` (the hot loop), :func:`_end_epoch` (validation, logging, early
stopping, checkpoint), :func:`_finish` (the artifact). :class:`Progress` is everything a
checkpoint stores besides tensors; :class:`TrainStep` is the model plus its objective, the
module DistributedDataParallel wraps and ``--compile`` compiles.

What is guaranteed (docs/promises.md): a step whose loss or gradient is not finite is
skipped and counted, and after ``--max-skipped-steps`` in a row training stops with a
diagnosis, keeping the last good checkpoint (NaN weights are never written). Ctrl-C or
SIGTERM stops at the next step boundary and saves exactly the state after the last
completed step, so resuming continues bit-for-bit. ``config.json`` of a resumed run
changes only at the first checkpoint written with the new settings. Determinism: the data
order is a function of (seed, epoch); the noise comes from the global torch RNG, seeded
once and saved in every checkpoint; validation runs on a forked RNG.

Scale-out (see :mod:`aevb.distributed`): under torchrun every rank runs this function; each
takes its slice of every global batch and of its noise, DDP averages the gradients, metric
sums are all-reduced, validation is sharded, and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed, fused_adam, rundir, tracking
from .accumulate import MeanAccumulator, all_reduce_
from .config import DataConfig, RunConfig
from .data import (
    DATASETS,
    PYTHON_SOURCE,
    DataSource,
    check_options_apply,
    load_dataset,
    shard_range,
)
from .errors import AevbError, CheckpointError, ConfigError, TrainingInterrupted
from .evaluate import evaluate_objective
from .models import MODELS, LatentVariableModel, build_model
from .objectives import Objective, ObjectiveOutput, build_objective
from .schedules import build_schedules

logger = logging.getLogger("aevb")


@dataclass
class TrainResult:
    """What ``train`` returns: where the run is, the model (on its device) and the final metrics."""

    run_dir: Path
    model: nn.Module
    metrics: dict[str, Any]
    config: RunConfig


@dataclass
class Progress:
    """Where training stands: what a checkpoint stores besides tensors (JSON).

    ``epoch`` counts completed epochs; the epoch in progress began at ``epoch_start_step``
    with batches of ``batch_size``, so a resume finds its place even after the batch size
    changed at an earlier epoch boundary.
    """

    step: int = 0
    epoch: int = 0
    epoch_start_step: int = 0
    batch_size: int = 0
    best_valid: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0
    skipped_steps: int = 0
    cpu_time_s: float = 0.0  # absent from states written before it: 0 (the sum restarts)

    @classmethod
    def from_dict(cls, d: dict[str, Any], batch_size: int, steps_per_epoch: int) -> Progress:
        names = {f.name for f in fields(cls)}
        p = cls(**{k: v for k, v in d.items() if k in names})
        if "epoch_start_step" not in d:  # written by aevb 0.1: one batch size throughout
            p.epoch_start_step = p.epoch * steps_per_epoch
            p.batch_size = batch_size
        p._check()
        if p.best_valid is not None and not math.isfinite(p.best_valid):
            p.best_valid = None
        return p

    def _check(self) -> None:
        """Refuse a progress record whose fields have the wrong type or sign (a corrupt file)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and "None" in str(f.type):
                continue
            if str(f.type).startswith("bool"):
                ok = type(v) is bool
            elif str(f.type).startswith("int"):
                ok = type(v) is int and v >= 0
            else:
                ok = type(v) in (int, float)
            if not ok:
                raise CheckpointError(
                    f"{rundir.STATE_FILE} is corrupt (its progress has {f.name} = {v!r}); "
                    "restore the file, or start a new run"
                )
        if self.epoch_start_step > self.step:
            raise CheckpointError(
                f"{rundir.STATE_FILE} is corrupt (its epoch starts at step "
                f"{self.epoch_start_step}, after step {self.step}); restore the file, or start "
                "a new run"
            )

    @property
    def at_epoch_boundary(self) -> bool:
        return self.step == self.epoch_start_step


class StepMetrics:
    """The posterior's scalar metrics over an epoch's steps (codebook usage, perplexity, ...).

    Each is logged as its mean over the applied steps (and over the ranks), except running
    counts named ``*_total``, logged as their last value.
    """

    def __init__(self) -> None:
        self.means = MeanAccumulator()
        self.last: dict[str, Tensor] = {}

    def add(self, metrics: dict[str, Tensor], applied: Tensor) -> None:
        """One step's metrics (0-dim tensors); ``applied`` is False for a skipped step."""
        means = {
            k: v.detach().to(torch.float64).reshape(1)
            for k, v in metrics.items()
            if not k.endswith("_total")
        }
        if means:
            self.means.add(mask=applied, **means)
        self.last.update({k: v.detach() for k, v in metrics.items() if k.endswith("_total")})

    def result(self) -> dict[str, float]:
        """``{name: value}`` (a collective under torch.distributed: every rank calls it)."""
        all_reduce_(self.means)
        out = {k: v for k, v in self.means.result().items() if not k.endswith("_se")}
        return {**out, **{k: float(v) for k, v in self.last.items()}}


class TrainStep(nn.Module):
    """The model and its objective: one forward gives the per-example objective terms.

    This is what DistributedDataParallel wraps and ``torch.compile`` compiles; the model
    inside stays the plain module that is evaluated and saved.
    """

    def __init__(self, model: LatentVariableModel, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self, x: Tensor, y: Tensor | None, eps: Tensor, hyper: dict[str, float]
    ) -> ObjectiveOutput:
        return self.objective(self.model, x, y, eps, hyper, train=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for but no CUDA device is available; use --device cpu"
        )
    return torch.device(name)


def default_run_dir(config: RunConfig) -> Path:
    name = Path(config.data.dataset).stem if "/" in config.data.dataset else config.data.dataset
    return Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def resolve_model_config(config: RunConfig, dataset: DataSource) -> RunConfig:
    """Fill in what the data decides (input shape, 'auto' likelihood, and what the model
    variant takes from the data, e.g. a conditional model's classes) and check the rest."""
    info = dataset.info
    model = config.model
    if model.input_shape and tuple(model.input_shape) != tuple(info.shape):
        raise ConfigError(
            f"the model expects examples of shape {tuple(model.input_shape)} but {info.name} "
            f"has shape {tuple(info.shape)}"
        )
    likelihood = info.likelihood if model.likelihood == "auto" else model.likelihood
    config = replace(
        config, model=replace(model, input_shape=tuple(info.shape), likelihood=likelihood)
    )
    variant = MODELS.get(config.model.model)
    return variant.fit_config(config, info) if variant is not None else config


def record_source(data: DataConfig) -> DataConfig:
    """A user's data path made absolute, so later commands find it from any directory."""
    path = Path(data.dataset).expanduser()
    if data.dataset not in DATASETS and path.exists():
        return replace(data, dataset=str(path.resolve()))
    return data


def effective_batch_size(batch_size: int, n_train: int) -> int:
    """The global batch: ``batch_size``, or the whole training split when it is smaller.

    Each rank's loss is the sum over its share divided by the global batch size, so shards
    of unequal size (the whole split of an odd size, say) still average exactly as one
    process does.
    """
    if batch_size > n_train:
        logger.warning(
            "--batch-size %d exceeds the %d training examples: each step uses the whole "
            "training split as one batch",
            batch_size,
            n_train,
        )
        return n_train
    return batch_size


def train(
    config: RunConfig,
    out_dir: str | Path | None = None,
    *,
    dataset: DataSource | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train (or, with ``resume=True``, continue) a run.

    Under torchrun (``aevb train --nproc N``) every process calls this; they join one
    process group for the duration of the call. ``out_dir`` may also be an unfinished run
    of the same configuration, which is then continued.

    Args:
        config: the run's configuration; ``batch_size`` is the global batch.
        out_dir: the run directory (default ``runs/<dataset>-<timestamp>``).
        dataset: use this dataset instead of loading ``config.data``.
        resume: continue the run in ``out_dir`` from its training state.
        progress: show a progress bar (rank 0 only).

    Returns:
        A :class:`TrainResult` (on every rank).

    Raises:
        TrainingInterrupted: after Ctrl-C/SIGTERM, once the state is saved (exit 130).
        AevbError: bad input, a folder that must not be written, divergence.
    """
    build_objective(config)  # an impossible objective fails before anything is touched
    tracking.check_config(config)  # --tensorboard without the package, likewise
    with distributed.session(resolve_device(config.train.device)) as ctx:
        run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
        run_dir = distributed.broadcast(run_dir)
        claim = distributed.on_main(rundir.claim, run_dir, resume)
        failed = True
        try:
            result = _train(config, run_dir, claim.status, dataset, resume, progress, ctx)
            failed = False
            return result
        finally:
            if ctx.is_main:
                claim.release(failed=failed)


def _train(
    config: RunConfig,
    run_dir: Path,
    status: rundir.RunStatus,
    dataset: DataSource | None,
    resume: bool,
    progress: bool,
    ctx: distributed.Context,
) -> TrainResult:
    s = _setup(config, run_dir, status, dataset, resume, ctx)
    s.tracker = tracking.build_tracker(s.config, run_dir, s.prog.step, ctx.is_main)
    clock = Clock.resume(s.prog)
    bar = tqdm(
        total=s.n_steps,
        initial=s.prog.step,
        desc="train",
        unit="step",
        disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
        leave=False,
    )
    try:
        with _stop_on_signals() as stop:
            _run(s, stop, bar, clock)
    finally:
        bar.close()
        s.tracker.close()
    return _finish(s)


# --- 1. set-up ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """Training time continued across resumes: wall seconds, and the CPU seconds of this
    process (all its threads; DataLoader worker processes are not counted)."""

    wall0: float
    cpu0: float

    @classmethod
    def resume(cls, prog: Progress) -> Clock:
        return cls(time.perf_counter() - prog.wall_time_s, time.process_time() - prog.cpu_time_s)

    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    def cpu(self) -> float:
        return time.process_time() - self.cpu0


@dataclass
class Session:
    """Everything one training command works with (built by :func:`_setup`)."""

    config: RunConfig
    run_dir: Path
    dataset: DataSource
    model: LatentVariableModel
    objective: Objective
    optimizer: torch.optim.Optimizer
    step_fn: nn.Module
    schedules: dict[str, Callable[[int], float]]
    prog: Progress
    batch_size: int
    steps_per_epoch: int
    n_steps: int
    ctx: distributed.Context
    best_weights: dict[str, Tensor] | None = None
    config_written: bool = False
    last_checkpoint_step: int = -1
    good_steps: int = 0  # steps this command applied (not skipped), as of the last check
    good_before_epoch: int = 0
    last_batch: tuple[Tensor, Tensor | None] | None = None  # to check weights before a save
    tracker: tracking.Tracker = field(default_factory=tracking.NullTracker)
    step_metrics: StepMetrics | None = None  # the posterior's metrics in the current epoch


def _setup(
    config: RunConfig,
    run_dir: Path,
    status: rundir.RunStatus,
    dataset: DataSource | None,
    resume: bool,
    ctx: distributed.Context,
) -> Session:
    tc = config.train
    device = ctx.device
    # Data: one tensor per split on the device (or batches read from disk).
    if dataset is None:
        check_options_apply(config.data)
        dataset = load_dataset(config.data)
        config = replace(config, data=record_source(config.data))
    else:  # data handed over from Python: say so, rather than name a source it did not come from
        source = f"{PYTHON_SOURCE}{dataset.info.name}"
        config = replace(config, data=replace(config.data, dataset=source))
    config = resolve_model_config(config, dataset)
    resume = resume or _continues(run_dir, status, config)
    dataset.to(device)
    batch_size = effective_batch_size(tc.batch_size, dataset.size("train"))
    if batch_size == tc.batch_size:  # the whole (small) split may split unevenly over ranks
        distributed.check_batch_size(batch_size, ctx.world_size)
    spe = dataset.steps_per_epoch(batch_size)

    # Model, objective and optimizer, seeded: every rank builds the same ones.
    torch.manual_seed(tc.seed)
    objective = build_objective(config)
    model = build_model(config).to(device)
    for x, _ in dataset.eval_batches("train", tc.eval_batch_size):  # batch-wise: may be on disk
        model.likelihood.check_data(x)
    optimizer = fused_adam.Adam(
        model.parameters(), lr=tc.lr, eps=tc.adam_eps, fused=device.type in ("cpu", "cuda")
    )
    prog = Progress(batch_size=batch_size)
    best_weights = None
    if resume:
        # One training state per run, written by rank 0 at any world size, read by all.
        saved = ckpt.load_training_state(run_dir, model, optimizer)
        prog = Progress.from_dict(saved, batch_size, spe)
        _check_resumable(run_dir, prog, batch_size)
        if prog.at_epoch_boundary:
            prog.batch_size = batch_size
        best_weights = ckpt.load_best_weights(run_dir, model) if tc.patience is not None else None
        distributed.sync_device_rng(device)
    else:
        model.data_init(dataset.head("train", 4096).to(device))
    n_steps = _total_steps(config, prog, spe)
    if resume and prog.step >= n_steps and (run_dir / rundir.MODEL_FILE).exists():
        raise ConfigError(
            f"{run_dir} is already at step {prog.step}; give --steps (or --epochs) beyond it "
            "to continue"
        )
    distributed.on_main(_prepare_run_dir, run_dir, config, dataset, resume, prog.step)
    # DDP averages the gradients; `model` stays the plain module we evaluate and save.
    step_fn: nn.Module = distributed.wrap(TrainStep(model, objective), ctx)
    if tc.compile:
        step_fn = torch.compile(step_fn)
    schedules = build_schedules(config, spe, n_steps)
    return Session(
        config,
        run_dir,
        dataset,
        model,
        objective,
        optimizer,
        step_fn,
        schedules,
        prog,
        batch_size,
        spe,
        n_steps,
        ctx,
        best_weights,
        config_written=not resume,
        last_checkpoint_step=prog.step if resume else -1,
    )


def _continues(run_dir: Path, status: rundir.RunStatus, config: RunConfig) -> bool:
    """Whether ``train --out run_dir`` continues an unfinished run there (same config only)."""
    if status.kind != "unfinished":
        return False
    stored = {k: v for k, v in (status.config or {}).items() if k != "dataset_info"}
    try:
        same = RunConfig.from_dict(stored) == config
    except AevbError:
        same = False
    if not same:
        raise ConfigError(
            f"{run_dir} holds an unfinished run with another configuration; nothing was "
            f"written: continue it with `aevb train --resume {run_dir}`, or give another --out"
        )
    if status.step is None and (run_dir / rundir.STATE_FILE).exists():
        raise CheckpointError(
            f"{run_dir} holds an unfinished run whose {rundir.STATE_FILE} cannot be read; nothing "
            "was written: restore the file, or delete it to start the run again"
        )
    if status.step is None:
        return False  # it stopped before its first checkpoint: start it again
    logger.warning("continuing the unfinished run in %s from step %d", run_dir, status.step)
    return True


def _check_resumable(run_dir: Path, prog: Progress, batch_size: int) -> None:
    if prog.stopped_early:
        raise ConfigError(
            f"{run_dir} stopped early at step {prog.step} (--patience); start a new run "
            "(with a larger --patience) to train longer"
        )
    if batch_size != prog.batch_size and not prog.at_epoch_boundary:
        done = prog.step - prog.epoch_start_step
        raise ConfigError(
            f"--batch-size can change only at an epoch boundary; {run_dir} is {done} steps into "
            f"epoch {prog.epoch + 1} at batch size {prog.batch_size}: resume without "
            "--batch-size to finish the epoch first"
        )


def _total_steps(config: RunConfig, prog: Progress, steps_per_epoch: int) -> int:
    """The step at which training ends: --steps, or --epochs counted from the current epoch."""
    t = config.train
    if t.steps is not None:
        return t.steps
    return prog.epoch_start_step + (t.epochs - prog.epoch) * steps_per_epoch


# --- 2. the epochs -------------------------------------------------------------------------
class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops at the next step boundary."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.when = 0.0

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """Turn Ctrl-C and SIGTERM into a flag for the loop (main thread only).

    A second signal more than two seconds after the first interrupts at once (the last
    checkpoint is then what survives); one within two seconds is the same request twice
    (torchrun forwards the terminal's Ctrl-C to workers that also received it).
    """
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag and time.monotonic() - flag.when > 2.0:
            raise KeyboardInterrupt
        if not flag:
            flag.signum, flag.when = signum, time.monotonic()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _run(s: Session, stop: _StopFlag, bar: tqdm, clock: Clock) -> None:
    prog = s.prog
    try:
        while prog.step < s.n_steps and not prog.stopped_early:
            acc, skipped = _train_epoch(s, stop, bar, clock)
            epoch_done = prog.step - prog.epoch_start_step >= s.steps_per_epoch
            if epoch_done or prog.step >= s.n_steps:
                _end_epoch(s, acc, skipped, epoch_done, clock)
            elif stop:  # stopped mid-epoch: count its skipped steps before saving
                prog.skipped_steps += skipped
            if stop:
                break
    except KeyboardInterrupt:  # a second Ctrl-C: no time to save
        if s.last_checkpoint_step < 0:
            raise TrainingInterrupted(
                f"interrupted before the first checkpoint of {s.run_dir}"
            ) from None
        raise TrainingInterrupted(
            f"interrupted; {s.run_dir} keeps its last checkpoint (step "
            f"{s.last_checkpoint_step}): continue with `aevb train --resume {s.run_dir}`"
        ) from None
    if stop and prog.step < s.n_steps and not prog.stopped_early:
        _checkpoint(s, clock, check_weights=True)
        raise TrainingInterrupted(
            f"interrupted at step {prog.step}; the training state is saved in {s.run_dir}: "
            f"continue with `aevb train --resume {s.run_dir}`"
        )


def _train_epoch(
    s: Session, stop: _StopFlag, bar: tqdm, clock: Clock
) -> tuple[MeanAccumulator, int]:
    """Steps of the current epoch until it ends, training ends, or a stop is agreed.

    Returns the epoch's accumulated per-example terms and the number of skipped steps
    (the same on every rank: the ranks agree on each step's flag). The hot loop has no
    host sync except every ``log_every`` steps.
    """
    prog, tc, ctx, device = s.prog, s.config.train, s.ctx, s.ctx.device
    noise = s.model.latent.noise
    lo, hi = shard_range(s.batch_size, ctx.rank, ctx.world_size)
    per_rank = s.batch_size / ctx.world_size
    acc = MeanAccumulator()
    s.step_metrics = step_metrics = StepMetrics()
    skips = SkipLog()
    s.good_before_epoch = s.good_steps
    params = [p for p in s.model.parameters() if p.requires_grad]
    epoch_start = prog.step
    batches = s.dataset.train_batches(
        s.batch_size,
        tc.seed,
        prog.epoch,
        start_step=prog.step - prog.epoch_start_step,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    s.model.train()
    logged = {"n": 0, "loss": 0.0, "neg_elbo": 0.0}  # the tracker's last step values
    for x, y in batches:
        hyper = {name: f(prog.step) for name, f in s.schedules.items()}
        for group in s.optimizer.param_groups:
            group["lr"] = hyper["lr"]
        # Noise for the whole global batch, this rank's slice: every world size sees the
        # same noise per example (rank 0 of 1 takes all of it).
        eps = noise.draw(s.objective.num_samples, s.batch_size, device)
        if ctx.world_size > 1:
            eps = eps[:, lo:hi]
        out = s.step_fn(x, y, eps, hyper)
        # DDP averages the ranks' gradients: each rank's sum over per_rank makes the
        # global batch's mean (one process: the mean, in one operation)
        loss = out.loss.mean() if ctx.world_size == 1 else out.loss.sum() / per_rank
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # A non-finite loss (on any rank) skips the step. With --grad-clip the gradient norm
        # is at hand and a non-finite one skips it too; without, a gradient that overflows
        # although the loss did not would make non-finite weights, which the next
        # checkpoint refuses to write (the last good one stays).
        bad = _not_finite(loss.detach())
        if tc.grad_clip is not None:
            bad = bad | _not_finite(nn.utils.clip_grad_norm_(params, tc.grad_clip))
        bad = distributed.any_rank(bad)
        _optimizer_step(s.optimizer, bad)
        # per-example scalars only: the per-dimension KL is logged from validation
        acc.add_later(bad, **{k: v for k, v in out.per_example().items() if v.dim() == 1})
        if out.metrics:
            step_metrics.add(out.metrics, ~bad)
        skips.add(bad)
        s.last_batch = (x, y)
        prog.step += 1
        bar.update(1)
        at_check = prog.step % tc.log_every == 0
        if at_check:
            _check_divergence(s, skips, prog.step - epoch_start)
            if not bar.disable and acc.n:
                mean = float(acc.sums["neg_elbo"]) / acc.n  # this rank's slice only
                bar.set_postfix_str(f"epoch {prog.epoch + 1} neg-ELBO {mean:.3f} nats")
            if s.tracker.active:
                _track_steps(s.tracker, acc, logged, prog.step)
        if tc.checkpoint_every and prog.step % tc.checkpoint_every == 0:
            _check_divergence(s, skips, prog.step - epoch_start)
            _checkpoint(s, clock, check_weights=True)
        if prog.step >= s.n_steps:
            break
        # Stop at a step boundary; several processes agree on it every log_every steps.
        if ctx.world_size == 1:
            if stop:
                break
        elif at_check and distributed.any_rank_flag(bool(stop)):
            stop.signum = stop.signum or signal.SIGINT
            break
    _check_divergence(s, skips, prog.step - epoch_start)
    return acc, skips.skipped


def _track_steps(
    tracker: tracking.Tracker, acc: MeanAccumulator, last: dict[str, Any], step: int
) -> None:
    """Mean loss and neg-ELBO over the steps since the last call (this rank's slice; skipped
    steps count for nothing), to the tracker."""
    n, sums = acc.n, acc.sums
    values = {k: float(sums[k]) for k in ("loss", "neg_elbo")}
    if n > last["n"]:
        tracker.log_steps(step, {k: (v - last[k]) / (n - last["n"]) for k, v in values.items()})
    last.update(n=n, **values)


def _optimizer_step(optimizer: torch.optim.Optimizer, bad: Tensor) -> None:
    """Adam's step, skipped when ``bad`` (no host sync with the fused kernels)."""
    # The fused kernel skips the update (and the step count) where found_inf is set, as it
    # does for GradScaler; called directly, without torch.optim's per-step Python.
    fused_adam.step(optimizer, bad.to(torch.float32))


def _not_finite(t: Tensor) -> Tensor:
    """``~isfinite(t)`` in two operations (``isfinite`` is four, and the negation a fifth):
    ``t - t`` is 0 for a finite number and NaN for an infinite one or NaN."""
    return (t - t).ne(0)


class SkipLog:
    """Which of an epoch's steps were skipped: kept as the steps' flags and counted at the
    checks (a host sync there), not with tensor operations at every step."""

    def __init__(self) -> None:
        self.skipped = 0  # steps skipped so far
        self.run = 0  # of them, the latest steps in a row
        self._pending: list[Tensor] = []

    def add(self, bad: Tensor) -> None:
        """One step's flag (a 0-dim bool tensor: True where the step was skipped)."""
        self._pending.append(bad)

    def count(self) -> SkipLog:
        """Fold the flags added since the last call into the counts (a host sync)."""
        if self._pending:
            flags = torch.stack(self._pending).tolist()
            self._pending.clear()
            for f in flags:
                self.skipped += f
                self.run = self.run + 1 if f else 0
        return self


def _check_divergence(s: Session, skips: SkipLog, taken: int) -> None:
    """Stop cleanly after ``--max-skipped-steps`` non-finite steps in a row, saying why.

    ``taken`` steps of this epoch ran so far; ``skips`` says how many were skipped.
    """
    skips.count()
    s.good_steps = s.good_before_epoch + taken - skips.skipped
    run = skips.run
    if run < s.config.train.max_skipped_steps:
        return
    what = f"{run} steps in a row had a non-finite loss or gradient and were skipped"
    raise AevbError(_divergence_message(s, what))


def _divergence_message(s: Session, what: str) -> str:
    tc, prog = s.config.train, s.prog
    keep = (
        f"the last good checkpoint (step {s.last_checkpoint_step}) is kept"
        if s.last_checkpoint_step >= 0
        else "nothing was saved"
    )
    weights = _largest_weight(s.model)
    lo, hi = s.dataset.info.value_range
    if not math.isfinite(weights):
        cause = f"the weights became non-finite under --lr {tc.lr:g}: lower --lr or set --grad-clip"
    elif s.good_steps == 0:
        cause = (
            f"the loss is not finite even at the starting weights, so the cause is the data "
            f"(values span [{lo:.3g}, {hi:.3g}]) or the model settings (--likelihood "
            f"{s.config.model.likelihood}, --sigma {s.config.model.sigma:g}), not the learning "
            "rate: rescale or standardise the data, or choose another likelihood"
        )
    else:
        cause = (
            f"the weights grew to {weights:.3g} in absolute value under --lr {tc.lr:g}: lower "
            "--lr or set --grad-clip"
        )
    return f"training diverged at step {prog.step}: {what}; {cause}; {keep}"


def _largest_weight(model: nn.Module) -> float:
    with torch.no_grad():
        return max(float(p.detach().abs().max()) for p in model.parameters())


def _end_epoch(
    s: Session, acc: MeanAccumulator, skipped: int, epoch_done: bool, clock: Clock
) -> None:
    """Validate, log one metrics line, apply early stopping, checkpoint."""
    prog, tc = s.prog, s.config.train
    prog.skipped_steps += skipped
    if epoch_done:
        prog.epoch += 1
        prog.epoch_start_step = prog.step
        prog.batch_size = s.batch_size
    record = _log_epoch(s, acc, clock)
    valid = record.get(f"valid_{s.objective.monitor}", record["valid_neg_elbo"])
    if not math.isfinite(valid):
        raise AevbError(
            _divergence_message(s, f"the validation {s.objective.monitor} is not finite")
        )
    if prog.best_valid is None or valid < prog.best_valid:
        prog.best_valid, prog.bad_epochs = valid, 0
        prog.best_epoch, prog.best_step = prog.epoch, prog.step
        if tc.patience is not None:
            s.best_weights = {k: v.detach().clone() for k, v in s.model.state_dict().items()}
    else:
        prog.bad_epochs += 1
        if tc.patience is not None and prog.bad_epochs >= tc.patience:
            prog.stopped_early = True
    _checkpoint(s, clock)
    if epoch_done and prog.epoch in tc.snapshot_epochs:
        distributed.on_main(ckpt.save_snapshot, s.model, s.run_dir, prog.epoch)


def _log_epoch(s: Session, acc: MeanAccumulator, clock: Clock) -> dict[str, Any]:
    prog, tc, ctx = s.prog, s.config.train, s.ctx
    record: dict[str, Any] = {"epoch": prog.epoch, "step": prog.step}
    all_reduce_(acc)  # the sums (and counts) of every rank's slice: the global batch's means
    train_means = acc.result()
    record.update({f"train_{k}": v for k, v in train_means.items() if not k.endswith("_se")})
    if s.step_metrics is not None:
        record.update({f"train_{k}": v for k, v in s.step_metrics.result().items()})
    valid = evaluate_objective(
        s.model,
        s.objective,
        s.dataset,
        "valid",
        tc.eval_batch_size,
        seed=tc.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )  # sharded, all-reduced
    record.update(
        {f"valid_{k}": v for k, v in valid.items() if not k.endswith("_se") and k != "n_examples"}
    )
    last = max(prog.step - 1, 0)
    record.update({name: f(last) for name, f in s.schedules.items()})  # in force at the last step
    record["skipped_steps"] = prog.skipped_steps
    record["wall_time_s"] = round(clock.wall(), 3)
    record["cpu_time_s"] = round(clock.cpu(), 3)
    s.model.train()
    if ctx.is_main:
        ckpt.append_metrics(s.run_dir, record)
        s.tracker.log_epoch(prog.step, record, s.schedules, s.model, s.dataset)
    return record


def _checkpoint(s: Session, clock: Clock, check_weights: bool = False) -> None:
    """Write the training state (rank 0), refusing non-finite weights; then, on a resume, the config.

    With ``check_weights`` (a save between validations: ``--checkpoint-every``, Ctrl-C) the
    current weights must also give a finite objective on the last training batch; finite
    weights can still be poisoned (a variance that overflows), and such a state is not saved.
    """
    if s.last_checkpoint_step == s.prog.step:
        return
    if check_weights and s.last_batch is not None and not _weights_give_finite_loss(s):
        raise AevbError(
            _divergence_message(s, "the objective is not finite at the current weights")
        )
    s.prog.wall_time_s, s.prog.cpu_time_s = clock.wall(), clock.cpu()
    try:
        distributed.on_main(
            ckpt.save_training_state,
            s.run_dir,
            s.model,
            s.optimizer,
            asdict(s.prog),
            s.best_weights,
            s.config,
        )
    except ckpt.NonFiniteStateError:
        raise AevbError(_divergence_message(s, "the weights are not finite")) from None
    s.last_checkpoint_step = s.prog.step
    if not s.config_written:  # the new settings have produced a good state: record them
        distributed.on_main(ckpt.save_config, s.run_dir, s.config, _info_dict(s.dataset))
        s.config_written = True


@torch.no_grad()
def _weights_give_finite_loss(s: Session) -> bool:
    """The objective (beta 1, exact samples) on the last training batch, at the current weights."""
    x, y = s.last_batch
    s.model.eval()  # a check: training-mode state updates (a codebook's EMA) must not happen
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            eps = s.model.latent.noise.draw(s.objective.num_samples, len(x), x.device)
            out = s.objective(s.model, x, y, eps, {"beta": 1.0}, train=False)
    finally:
        s.model.train()
    ok = torch.isfinite(out.loss).all()
    return bool(distributed.any_rank(~ok).logical_not())


# --- 3. the artifact ------------------------------------------------------------------------
def _finish(s: Session) -> TrainResult:
    """The best weights under early stopping, else the last; rank 0 writes model and figures."""
    if s.best_weights is not None:
        final = build_model(s.config).to(s.ctx.device)
        final.load_state_dict(s.best_weights)
    else:
        final = s.model
    final.eval()
    if not s.config_written:
        distributed.on_main(ckpt.save_config, s.run_dir, s.config, _info_dict(s.dataset))
    metrics = distributed.on_main(
        _write_artifact, s.run_dir, final, s.dataset, s.config.train.figures
    )
    if metrics and s.best_weights is not None:  # the saved model is the best epoch's, say which
        metrics = {
            **metrics,
            "best_epoch": s.prog.best_epoch,
            "best_valid_neg_elbo": s.prog.best_valid,
            "stopped_early": s.prog.stopped_early,
        }
    return TrainResult(s.run_dir, final, metrics, s.config)


def resume(
    run_dir: str | Path,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    progress: bool = True,
    **train_overrides: Any,
) -> TrainResult:
    """Continue the run in ``run_dir`` up to ``steps`` (or ``epochs``) in total.

    N steps straight through and N/2 steps followed by ``resume(run, steps=N)`` give
    bit-identical weights on the CPU (at the same world size). Only training settings may
    change (``lr=...``, ``batch_size=...`` at an epoch boundary, ...).
    """
    config = ckpt.load_config(run_dir)
    overrides = dict(train_overrides)
    if steps is not None:
        overrides["steps"] = steps
    if epochs is not None:
        overrides.update(epochs=epochs, steps=None)
    if overrides:
        config = config.replace(**overrides)
    return train(config, run_dir, resume=True, progress=progress)


# --- what rank 0 writes ---------------------------------------------------------------------
def _prepare_run_dir(
    run_dir: Path, config: RunConfig, dataset: DataSource, resume: bool, step: int
) -> None:
    if resume:
        ckpt.truncate_metrics(run_dir, step)
    else:
        (run_dir / rundir.METRICS_FILE).unlink(missing_ok=True)  # of a run that never checkpointed
        tracking.remove_event_files(run_dir)
        ckpt.save_config(run_dir, config, _info_dict(dataset))


def _write_artifact(
    run_dir: Path, model: nn.Module, dataset: DataSource, figures: bool
) -> dict[str, Any]:
    """Write the model (and figures); return the last metrics record."""
    ckpt.save_model(model, run_dir)
    metrics = ckpt.read_metrics(run_dir)
    if figures:
        from .figures import draw_run_figures

        draw_run_figures(run_dir, model, dataset)
    return metrics[-1] if metrics else {}


def _info_dict(dataset: DataSource) -> dict[str, Any]:
    info = dataset.info
    return {
        "name": info.name,
        "shape": list(info.shape),
        "value_range": list(info.value_range),
        "has_labels": info.has_labels,
        "num_classes": info.num_classes,
        "likelihood": info.likelihood,
        "description": info.description,
        "transform": info.transform,
        "sizes": {s: dataset.size(s) for s in ("train", "valid", "test")},
    }
