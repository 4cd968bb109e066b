"""The training loop, readable top to bottom.

``train(config, out_dir)`` builds the data and the model from a :class:`RunConfig`, runs
Adam for the configured steps or epochs, validates after every epoch, logs to
``metrics.jsonl``, checkpoints atomically, and writes the model and figures.
``resume(run_dir, steps=N)`` continues a run in place up to N steps in total, bit-exactly.

Determinism: the data order is a function of (seed, epoch); the sampling noise comes
from the global torch RNG, seeded once and saved in every checkpoint; evaluation runs on
a forked RNG so it never disturbs that stream.

Scale-out (see :mod:`aevb.distributed` for the launch commands): under torchrun every
rank runs this same function. Each takes its slice of every global batch (and of its
noise), DistributedDataParallel averages the gradients, metric sums are all-reduced
before they are logged, validation is sharded, and only rank 0 writes files. With one
process all of this reduces to the plain loop (world size 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import distributed
from .config import DataConfig, RunConfig, TrainConfig
from .data import DATASETS, PYTHON_SOURCE, Dataset, load_dataset, shard_range
from .errors import AevbError, ConfigError
from .evaluate import MeanAccumulator, all_reduce_, evaluate_elbo
from .models import build_model


@dataclass
class TrainResult:
    """What ``train`` returns: where the run is, the model (on its device) and the final metrics."""

    run_dir: Path
    model: nn.Module
    metrics: dict[str, Any]
    config: RunConfig


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


def resolve_model_config(config: RunConfig, dataset: Dataset) -> RunConfig:
    """Fill in what the data decides (input shape, 'auto' likelihood) and check the rest."""
    info = dataset.info
    model = config.model
    if model.input_shape and tuple(model.input_shape) != tuple(info.shape):
        raise ConfigError(
            f"the model expects examples of shape {tuple(model.input_shape)} but {info.name} "
            f"has shape {tuple(info.shape)}"
        )
    likelihood = info.likelihood if model.likelihood == "auto" else model.likelihood
    model = replace(model, input_shape=tuple(info.shape), likelihood=likelihood)
    return replace(config, model=model)


def record_source(data: DataConfig) -> DataConfig:
    """A user's data path made absolute, so later commands find it from any directory."""
    path = Path(data.dataset).expanduser()
    if data.dataset not in DATASETS and path.exists():
        return replace(data, dataset=str(path.resolve()))
    return data


def total_steps(config: RunConfig, steps_per_epoch: int) -> int:
    t = config.train
    n = t.steps if t.steps is not None else t.epochs * steps_per_epoch
    if n < 1:
        raise ConfigError("nothing to train: give --steps >= 1 or --epochs >= 1")
    return n


def train(
    config: RunConfig,
    out_dir: str | Path | None = None,
    *,
    dataset: Dataset | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train (or, with ``resume=True``, continue) a run.

    Under torchrun (``aevb train --nproc N``) every process calls this; they join one
    process group for the duration of the call.

    Args:
        config: the run's configuration; ``batch_size`` is the global batch.
        out_dir: the run directory (default ``runs/<dataset>-<timestamp>``).
        dataset: use this dataset instead of loading ``config.data``.
        resume: continue the run in ``out_dir`` from its training state.
        progress: show a progress bar (rank 0 only).

    Returns:
        A :class:`TrainResult` (on every rank).
    """
    check_train_config(config.train)
    with distributed.session(resolve_device(config.train.device)) as ctx:
        return _train(config, out_dir, dataset, resume, progress, ctx)


def check_train_config(tc: TrainConfig) -> None:
    """Reject training settings the loop cannot run with, before anything is written."""
    if not (math.isfinite(tc.lr) and tc.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {tc.lr}")
    for flag, value, least in (
        ("--eval-batch-size", tc.eval_batch_size, 1),
        ("--log-every", tc.log_every, 1),
        ("--checkpoint-every", tc.checkpoint_every, 0),
        ("--patience", tc.patience, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    if tc.grad_clip is not None and not (math.isfinite(tc.grad_clip) and tc.grad_clip > 0):
        raise ConfigError(f"--grad-clip must be a finite number > 0, got {tc.grad_clip}")


def _train(
    config: RunConfig,
    out_dir: str | Path | None,
    dataset: Dataset | None,
    resume: bool,
    progress: bool,
    ctx: distributed.Context,
) -> TrainResult:
    tc = config.train
    device = ctx.device
    distributed.check_batch_size(tc.batch_size, ctx.world_size)
    # Rank 0's choice, so that every rank agrees on a default timestamped directory.
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    run_dir = distributed.broadcast(run_dir)

    # 1. Data: one tensor per split, on the device; this rank's slice of each global batch.
    if dataset is None:
        dataset = load_dataset(config.data)
        config = replace(config, data=record_source(config.data))
    else:  # data handed over from Python: say so, rather than name a source it did not come from
        source = f"{PYTHON_SOURCE}{dataset.info.name}"
        config = replace(config, data=replace(config.data, dataset=source))
    config = resolve_model_config(config, dataset)
    dataset.to(device)
    spe = dataset.steps_per_epoch(tc.batch_size)
    noise_lo, noise_hi = shard_range(tc.batch_size, ctx.rank, ctx.world_size)
    n_steps = total_steps(config, spe)

    # 2. Model and optimizer, seeded: every rank builds the same model and RNG stream.
    torch.manual_seed(tc.seed)
    model = build_model(config.model).to(device)
    for x in dataset.eval_batches("train", tc.eval_batch_size):  # batch-wise: data may be on disk
        model.likelihood.check_data(x)
    # Fused Adam: one kernel for the update instead of a dozen per parameter (about a
    # quarter of a CPU step for the 784-400-20 model); the arithmetic is Adam's.
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, fused=device.type in ("cpu", "cuda"))

    state = {
        "step": 0,
        "epoch": 0,
        "best_valid": math.inf,
        "bad_epochs": 0,
        "wall_time_s": 0.0,
        "stopped_early": False,
    }
    if resume:
        # One training state per run, written by rank 0 at any world size, read by all.
        state.update(ckpt.load_training_state(run_dir, model, optimizer))
        for group in optimizer.param_groups:  # the saved groups carry the old --lr
            group["lr"] = tc.lr
        best_weights = ckpt.load_best_weights(run_dir) if tc.patience is not None else None
        distributed.sync_device_rng(device)
        # Nothing left to do: say so, rather than rewrite the config with a shorter length.
        if state["stopped_early"]:
            raise ConfigError(
                f"{run_dir} stopped early at step {state['step']} (--patience); "
                "start a new run (with a larger --patience) to train longer"
            )
        if state["step"] >= n_steps and (run_dir / ckpt.MODEL_FILE).exists():
            raise ConfigError(
                f"{run_dir} is already at step {state['step']}; give --steps (or --epochs) "
                "beyond it to continue"
            )
    distributed.on_main(_prepare_run_dir, run_dir, config, dataset, resume, state["step"])
    # DDP averages the gradients; `model` stays the plain module we evaluate and save.
    step_fn = distributed.wrap(model, ctx)
    step_fn = torch.compile(step_fn) if tc.compile else step_fn

    if not resume:
        best_weights = None
    t0 = time.perf_counter() - state["wall_time_s"]
    bar = tqdm(
        total=n_steps,
        initial=state["step"],
        desc="train",
        unit="step",
        disable=not (progress and ctx.is_main),
        dynamic_ncols=True,
        leave=False,
    )
    model.train()
    try:
        while state["step"] < n_steps and not state["stopped_early"]:
            epoch = state["epoch"]
            start = state["step"] - epoch * spe
            acc = MeanAccumulator()
            batches = dataset.train_batches(
                tc.batch_size,
                tc.seed,
                epoch,
                start_step=start,
                rank=ctx.rank,
                world_size=ctx.world_size,
            )
            # 3. The hot loop: no host sync except the occasional progress-bar refresh.
            for x in batches:
                # Noise for the whole global batch, this rank's slice: every world size
                # sees the same noise per example (rank 0 of 1 takes all of it).
                eps = model.noise(tc.batch_size, device)[:, noise_lo:noise_hi]
                out = step_fn(x, eps)
                loss = out.loss.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                acc.add(loss=out.loss, neg_elbo=out.neg_elbo, recon_nll=out.recon_nll, kl=out.kl)
                state["step"] += 1
                bar.update(1)
                if state["step"] % tc.log_every == 0 and progress and ctx.is_main:
                    mean = float(acc.sums["neg_elbo"]) / acc.n  # this rank's slice only
                    bar.set_postfix_str(f"epoch {epoch} neg-ELBO {mean:.3f} nats")
                if tc.checkpoint_every and state["step"] % tc.checkpoint_every == 0:
                    distributed.on_main(
                        _checkpoint, run_dir, model, optimizer, state, t0, best_weights
                    )
                if state["step"] >= n_steps:
                    break
            epoch_done = state["step"] - epoch * spe >= spe
            if epoch_done:
                state["epoch"] += 1
            # 4. Validation after every epoch (and at the very end), then log and checkpoint.
            if epoch_done or state["step"] >= n_steps:
                record = _log_epoch(run_dir, model, dataset, config, state, acc, t0, ctx)
                valid = record["valid_neg_elbo"]
                if not math.isfinite(record.get("train_neg_elbo", 0.0)) or not math.isfinite(valid):
                    raise AevbError(
                        f"training diverged (neg-ELBO is not finite at step {state['step']}); "
                        "lower --lr or set --grad-clip"
                    )
                if valid < state["best_valid"]:
                    state["best_valid"], state["bad_epochs"] = valid, 0
                    state["best_epoch"], state["best_step"] = state["epoch"], state["step"]
                    if tc.patience is not None:
                        best_weights = {
                            k: v.detach().clone() for k, v in model.state_dict().items()
                        }
                else:
                    state["bad_epochs"] += 1
                    if tc.patience is not None and state["bad_epochs"] >= tc.patience:
                        state["stopped_early"] = True
                distributed.on_main(_checkpoint, run_dir, model, optimizer, state, t0, best_weights)
    except KeyboardInterrupt:
        if ctx.is_main:  # no collective here: the other ranks may be gone already
            _checkpoint(run_dir, model, optimizer, state, t0, best_weights)
        raise
    finally:
        bar.close()

    # 5. The artifact: the best weights under early stopping, else the last (rank 0 writes).
    if best_weights is not None:
        final = build_model(config.model).to(device)
        final.load_state_dict(best_weights)
    else:
        final = model
    final.eval()
    metrics = distributed.on_main(_write_artifact, run_dir, final, dataset, tc.figures)
    if metrics and best_weights is not None:  # the saved model is the best epoch's, say which
        metrics = {
            **metrics,
            "best_epoch": state.get("best_epoch"),
            "best_valid_neg_elbo": state["best_valid"],
            "stopped_early": state["stopped_early"],
        }
    return TrainResult(run_dir, final, metrics, config)


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
    bit-identical weights on the CPU (at the same world size).
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


# --- what rank 0 writes -----------------------------------------------------------------
def _prepare_run_dir(
    run_dir: Path, config: RunConfig, dataset: Dataset, resume: bool, step: int
) -> None:
    if resume:
        ckpt.truncate_metrics(run_dir, step)
    else:
        if (run_dir / ckpt.STATE_FILE).exists():
            raise AevbError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                "or pick another --out"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.save_config(run_dir, config, _info_dict(dataset))


def _checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    t0: float,
    best_weights: dict[str, torch.Tensor] | None = None,
) -> None:
    state["wall_time_s"] = time.perf_counter() - t0
    ckpt.save_training_state(run_dir, model, optimizer, dict(state), best_weights)


def _write_artifact(
    run_dir: Path, model: nn.Module, dataset: Dataset, figures: bool
) -> dict[str, Any]:
    """Write the model (and figures); return the last metrics record."""
    ckpt.save_model(model, run_dir)
    metrics = ckpt.read_metrics(run_dir)
    if figures:
        from .figures import draw_run_figures

        draw_run_figures(run_dir, model, dataset)
    return metrics[-1] if metrics else {}


def _log_epoch(
    run_dir: Path,
    model: nn.Module,
    dataset: Dataset,
    config: RunConfig,
    state: dict,
    acc: MeanAccumulator,
    t0: float,
    ctx: distributed.Context,
) -> dict[str, Any]:
    tc = config.train
    record: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"]}
    all_reduce_(acc)  # the sums (and n) of every rank's slice: the global batch's means
    if acc.n:
        train_means = acc.result()
        record.update({f"train_{k}": v for k, v in train_means.items() if not k.endswith("_se")})
    valid = evaluate_elbo(
        model,
        dataset,
        "valid",
        tc.eval_batch_size,
        seed=tc.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )  # sharded, all-reduced
    record.update(
        {f"valid_{k}": v for k, v in valid.items() if not k.endswith("_se") and k != "n_examples"}
    )
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)
    model.train()
    if ctx.is_main:
        ckpt.append_metrics(run_dir, record)
    return record


def _info_dict(dataset: Dataset) -> dict[str, Any]:
    info = dataset.info
    return {
        "name": info.name,
        "shape": list(info.shape),
        "value_range": list(info.value_range),
        "has_labels": info.has_labels,
        "likelihood": info.likelihood,
        "description": info.description,
        "transform": info.transform,
        "sizes": {s: dataset.size(s) for s in ("train", "valid", "test")},
    }
