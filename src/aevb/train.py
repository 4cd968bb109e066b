"""The training loop, readable top to bottom.

``train(config, out_dir)`` builds the data and the model from a :class:`RunConfig`, runs
Adam for the configured steps or epochs, validates after every epoch, logs to
``metrics.jsonl``, checkpoints atomically, and writes the model and figures.
``resume(run_dir, steps=N)`` continues a run in place up to N steps in total, bit-exactly.

Determinism: the data order is a function of (seed, epoch); the sampling noise comes
from the global torch RNG, seeded once and saved in every checkpoint; evaluation runs on
a forked RNG so it never disturbs that stream.
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
from .config import RunConfig
from .data import Dataset, load_dataset, shard_range
from .errors import AevbError, ConfigError
from .evaluate import MeanAccumulator, evaluate_elbo
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
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
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

    Args:
        config: the run's configuration.
        out_dir: the run directory (default ``runs/<dataset>-<timestamp>``).
        dataset: use this dataset instead of loading ``config.data``.
        resume: continue the run in ``out_dir`` from its training state.
        progress: show a progress bar.

    Returns:
        A :class:`TrainResult`.
    """
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    tc = config.train
    device = resolve_device(tc.device)

    # 1. Data: one tensor per split, on the device.
    dataset = dataset if dataset is not None else load_dataset(config.data)
    config = resolve_model_config(config, dataset)
    dataset.to(device)
    spe = dataset.steps_per_epoch(tc.batch_size)
    noise_lo, noise_hi = shard_range(tc.batch_size, 0, 1)
    n_steps = total_steps(config, spe)

    # 2. Model and optimizer, seeded.
    torch.manual_seed(tc.seed)
    model = build_model(config.model).to(device)
    model.likelihood.check_data(dataset.tensor("train"))
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    step_fn = model if not tc.compile else torch.compile(model)

    state = {"step": 0, "epoch": 0, "best_valid": math.inf, "bad_epochs": 0, "wall_time_s": 0.0,
             "stopped_early": False}
    if resume:
        state.update(ckpt.load_training_state(run_dir, model, optimizer))
        ckpt.truncate_metrics(run_dir, state["step"])
    else:
        if (run_dir / ckpt.STATE_FILE).exists():
            raise AevbError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.save_config(run_dir, config, _info_dict(dataset))

    best_weights: dict[str, torch.Tensor] | None = None
    t0 = time.perf_counter() - state["wall_time_s"]
    bar = tqdm(total=n_steps, initial=state["step"], desc="train", unit="step", disable=not progress,
               dynamic_ncols=True, leave=False)
    model.train()
    try:
        while state["step"] < n_steps and not state["stopped_early"]:
            epoch = state["epoch"]
            start = state["step"] - epoch * spe
            acc = MeanAccumulator()
            # 3. The hot loop: no host sync except the occasional progress-bar refresh.
            for x in dataset.train_batches(tc.batch_size, tc.seed, epoch, start_step=start):
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
                if state["step"] % tc.log_every == 0 and progress:
                    bar.set_postfix_str(f"epoch {epoch} neg-ELBO {float(acc.sums['neg_elbo']) / acc.n:.3f} nats")
                if tc.checkpoint_every and state["step"] % tc.checkpoint_every == 0:
                    _checkpoint(run_dir, model, optimizer, state, t0)
                if state["step"] >= n_steps:
                    break
            epoch_done = state["step"] - epoch * spe >= spe
            if epoch_done:
                state["epoch"] += 1
            # 4. Validation after every epoch (and at the very end), then log and checkpoint.
            if epoch_done or state["step"] >= n_steps:
                record = _log_epoch(run_dir, model, dataset, config, state, acc, t0)
                valid = record["valid_neg_elbo"]
                if not math.isfinite(record.get("train_neg_elbo", 0.0)) or not math.isfinite(valid):
                    raise AevbError(
                        f"training diverged (neg-ELBO is not finite at step {state['step']}); "
                        "lower --lr or set --grad-clip"
                    )
                if valid < state["best_valid"]:
                    state["best_valid"], state["bad_epochs"] = valid, 0
                    if tc.patience is not None:
                        best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    state["bad_epochs"] += 1
                    if tc.patience is not None and state["bad_epochs"] >= tc.patience:
                        state["stopped_early"] = True
                _checkpoint(run_dir, model, optimizer, state, t0)
    except KeyboardInterrupt:
        _checkpoint(run_dir, model, optimizer, state, t0)
        raise
    finally:
        bar.close()

    # 5. The artifact: the best weights under early stopping, else the last.
    if best_weights is not None:
        final = build_model(config.model).to(device)
        final.load_state_dict(best_weights)
        ckpt.save_model(final, run_dir)
    else:
        final = model
        ckpt.save_model(model, run_dir)
    final.eval()
    metrics = ckpt.read_metrics(run_dir)[-1] if ckpt.read_metrics(run_dir) else {}
    if tc.figures:
        from .figures import draw_run_figures

        draw_run_figures(run_dir, final, dataset)
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
    bit-identical weights on the CPU.
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


def _checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, t0: float) -> None:
    state["wall_time_s"] = time.perf_counter() - t0
    ckpt.save_training_state(run_dir, model, optimizer, dict(state))


def _log_epoch(
    run_dir: Path, model: nn.Module, dataset: Dataset, config: RunConfig, state: dict,
    acc: MeanAccumulator, t0: float,
) -> dict[str, Any]:
    tc = config.train
    record: dict[str, Any] = {"epoch": state["epoch"], "step": state["step"]}
    if acc.n:
        train_means = acc.result()
        record.update({f"train_{k}": v for k, v in train_means.items() if not k.endswith("_se")})
    valid = evaluate_elbo(model, dataset, "valid", tc.eval_batch_size, seed=tc.seed)
    record.update({f"valid_{k}": v for k, v in valid.items() if not k.endswith("_se") and k != "n_examples"})
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)
    model.train()
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
