"""The second stage: fit a trained model's learned prior to its posterior points.

VQ-VAE (van den Oord et al. 2017, https://arxiv.org/abs/1711.00937, section 3.2) trains
its autoencoder under a uniform prior over the codes, then fits an autoregressive prior (a
gated PixelCNN) to the code grids of the training images. ``aevb train-prior RUN`` does
that for any model that has such a prior
(:meth:`~aevb.models.base.LatentVariableModel.prior_network`):

* the data are the posterior points ``posterior(x).point()`` of the run's splits (the code
  grids), computed once in eval mode: a :class:`~aevb.data.Dataset` whose training batches
  follow the (seed, epoch) order of the trainer's;
* the objective is ``neg_log_prior = -log p_prior(z)``, nats per example; Adam on the
  prior's parameters alone, the autoencoder frozen;
* after every epoch the validation split is scored, one line is appended to
  ``RUN/prior/metrics.jsonl`` and the state is checkpointed atomically to
  ``RUN/prior/training_state.safetensors`` (network, Adam, RNG, progress), beside
  ``RUN/prior/settings.json`` (the settings and a fingerprint of the codes fitted);
* at the end the fitted network goes into the model (``set_prior_fitted``),
  ``RUN/model.safetensors`` is rewritten atomically, and the run's figures are redrawn, so
  ``samples.png`` shows the learned prior's samples.

The promises of ``aevb train`` hold: the run is locked for the whole command (``aevb
train --resume RUN`` and a second ``train-prior`` are refused while it runs); Ctrl-C or
SIGTERM stops at the next step and saves the state after the last completed step; running
the same command again continues bit for bit (N steps straight equal N/2 steps, stopped,
then continued to N), with ``--epochs``/``--steps`` beyond the last to train longer. If the
autoencoder is trained further, its codes change and the old prior state is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import fused_adam, rundir, runs
from .accumulate import MeanAccumulator
from .data.base import SPLITS, Dataset, DatasetInfo
from .errors import AevbError, CheckpointError, ConfigError, TrainingInterrupted
from .models.base import LatentVariableModel
from .train import Progress, _check_resumable, _optimizer_step, _stop_on_signals, resolve_device

PRIOR_DIR = "prior"
SETTINGS_FILE = "settings.json"
MAX_SKIPPED_STEPS = 20


@dataclass(frozen=True)
class PriorSettings:
    """How the prior is trained (``RUN/prior/settings.json``); every field is a flag of
    ``aevb train-prior``, and a later call may change them (``batch_size`` at an epoch
    boundary)."""

    epochs: int = 20
    steps: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("epochs", "steps", "batch_size", "eval_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr must be a finite number > 0, got {self.lr}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")


@dataclass
class PriorResult:
    """What :func:`train_prior` returns: the run, its model (prior fitted) and the last metrics."""

    run_dir: Path
    model: LatentVariableModel
    metrics: dict[str, Any]


# --- the pieces, as functions -------------------------------------------------------------
def neg_log_prior(prior: nn.Module, z: Tensor) -> Tensor:
    """The objective: ``-log p_prior(z)`` in nats, ``[B, *z]`` -> ``[B]``."""
    return -prior.log_prob(z)


@torch.no_grad()
def posterior_points(model: LatentVariableModel, dataset: Dataset, batch_size: int) -> Dataset:
    """The posterior points ``posterior(x).point()`` of every split (the code grids of a
    VQ-VAE), as a dataset ``[N, *z]`` on the model's device; the model must be in eval mode."""
    device = next(model.parameters()).device
    splits, labels = {}, {}
    for split in SPLITS:
        parts = []
        for x, y in dataset.eval_batches(split, batch_size):
            y = None if y is None else y.to(device)
            parts.append(model.posterior(x.to(device), y).point())
        splits[split] = torch.cat(parts)
        if (y := dataset.labels(split)) is not None:
            labels[split] = y.to(device)
    latent = model.latent
    info = DatasetInfo(
        f"posterior points of {dataset.info.name}",
        tuple(latent.shape),
        (0.0, float((latent.classes or 1) - 1)),
        dataset.info.has_labels,
        "categorical",
        f"posterior points ({latent.kind}, shape {tuple(latent.shape)}) of {dataset.info.name}",
    )
    return Dataset(info, splits, labels or None)


def fingerprint(points: Dataset) -> str:
    """SHA-256 of the training and validation points: which codes a prior state was fitted to."""
    h = hashlib.sha256()
    for split in ("train", "valid"):
        h.update(points.tensor(split).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Draw every layer's initial weights afresh from ``seed`` (a fresh fit starts here)."""
    torch.manual_seed(seed)
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


@torch.no_grad()
def score(prior: nn.Module, points: Dataset, split: str, batch_size: int) -> dict[str, float]:
    """``neg_log_prior`` (mean and standard error over the split, nats per example)."""
    acc = MeanAccumulator()
    for z, _ in points.eval_batches(split, batch_size):
        acc.add(neg_log_prior=neg_log_prior(prior, z))
    return acc.result()


# --- the command ------------------------------------------------------------------------------
def train_prior(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    progress: bool = True,
) -> PriorResult:
    """Fit (or continue fitting) the learned prior of a finished run.

    Args:
        run_dir: a finished run of a model with a prior network (``--model vqvae``).
        epochs, steps: train up to this many epochs (or steps, which take precedence) in all.
        batch_size, lr, seed: training settings (default: those stored in ``RUN/prior``, else
            128, 1e-3 and the run's seed).
        device: where to train.
        data_dir: where the run's named dataset now is.
        progress: show a progress bar.

    Returns:
        A :class:`PriorResult`; ``RUN/model.safetensors`` then holds the fitted prior.

    Raises:
        TrainingInterrupted: after Ctrl-C/SIGTERM, once the state is saved (exit 130).
        AevbError: a run that is unfinished, in use, has no prior network, or was trained
            further since its prior state was saved.
    """
    run_dir = Path(run_dir)
    config = ckpt.load_config(run_dir)
    ckpt.check_finished(run_dir)
    given = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    given = {k: v for k, v in given.items() if v is not None}
    if "epochs" in given and "steps" not in given:
        given["steps"] = None  # --epochs alone replaces a stored --steps, as `train --resume`
    PriorSettings(**{**asdict(PriorSettings()), **given})  # bad numbers fail before any work
    dev = resolve_device(device)
    with rundir.RunLock(run_dir):
        rundir.remove_stale_temporaries(run_dir)
        prior_dir = run_dir / PRIOR_DIR
        model = ckpt.load_model(run_dir, device=dev)
        net = model.prior_network()
        if net is None:
            raise ConfigError(
                f"--model {model.name} has no learned prior to fit; `aevb train-prior` fits the "
                "second-stage prior of models that have one (--model vqvae)"
            )
        resume = (prior_dir / ckpt.STATE_FILE).is_file()
        stored = _read_settings(prior_dir) if resume else {}
        base = PriorSettings(seed=config.train.seed)
        if stored:
            base = _settings_from(stored.get("settings", {}), prior_dir)
        settings = replace(base, **given)
        dataset = runs.load_run_dataset(run_dir, data_dir=data_dir)
        points = posterior_points(model, dataset, settings.eval_batch_size)
        codes = fingerprint(points)
        if resume and stored.get("fingerprint") != codes:
            raise CheckpointError(
                f"{prior_dir} holds a prior fitted to other codes (the model was trained "
                f"further since): remove {prior_dir} to fit the prior afresh"
            )
        prior_dir.mkdir(exist_ok=True)
        rundir.remove_stale_temporaries(prior_dir)
        model.eval()  # the autoencoder is frozen; only the prior's parameters train
        net.requires_grad_(True)
        optimizer = _optimizer(net, settings)
        prog, n_steps = _start(prior_dir, net, optimizer, points, settings, stored, run_dir)
        _Loop(prior_dir, net, optimizer, points, settings, codes, prog, n_steps).run(
            progress, run_dir
        )
        return _finish(run_dir, prior_dir, model, net, dataset, settings, codes, prog.step)


def _read_settings(prior_dir: Path) -> dict[str, Any]:
    path = prior_dir / SETTINGS_FILE
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is missing or corrupt ({e}); remove {prior_dir} to fit the prior afresh"
        ) from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is corrupt; remove {prior_dir} to fit the prior afresh")
    return d


def _settings_from(d: dict[str, Any], prior_dir: Path) -> PriorSettings:
    names = {f.name for f in fields(PriorSettings)}
    try:
        return PriorSettings(**{k: v for k, v in d.items() if k in names})
    except (TypeError, AevbError) as e:
        raise CheckpointError(
            f"{prior_dir / SETTINGS_FILE} is invalid ({e}); remove {prior_dir} to start afresh"
        ) from None


def _write_settings(
    prior_dir: Path, settings: PriorSettings, codes: str, fitted_step: int | None
) -> None:
    from . import __version__

    d = {
        "aevb_version": __version__,
        "settings": asdict(settings),
        "fingerprint": codes,
        "fitted_step": fitted_step,
    }
    ckpt.atomic_write_text(prior_dir / SETTINGS_FILE, json.dumps(d, indent=2) + "\n")


def _start(
    prior_dir: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    points: Dataset,
    settings: PriorSettings,
    stored: dict[str, Any],
    run_dir: Path,
) -> tuple[Progress, int]:
    """Fresh weights (seeded), or the saved state when there is one (``stored``); returns
    the progress and the step at which training ends."""
    batch_size = min(settings.batch_size, points.size("train"))
    spe = points.steps_per_epoch(batch_size)
    if not stored:
        reset_parameters(net, settings.seed)
        (prior_dir / ckpt.METRICS_FILE).unlink(missing_ok=True)
        return Progress(batch_size=batch_size), settings.steps or settings.epochs * spe
    saved = ckpt.load_training_state(prior_dir, net, optimizer)
    prog = Progress.from_dict(saved, batch_size, spe)
    _check_resumable(prior_dir, prog, batch_size)
    if prog.at_epoch_boundary:
        prog.batch_size = batch_size
    n_steps = settings.steps or prog.epoch_start_step + (settings.epochs - prog.epoch) * spe
    if prog.step >= n_steps and stored.get("fitted_step") == prog.step:
        raise ConfigError(
            f"the prior of {run_dir} is already fitted to step {prog.step}; give --epochs (or "
            "--steps) beyond it to train it longer"
        )
    ckpt.truncate_metrics(prior_dir, prog.step)
    return prog, n_steps


def _optimizer(net: nn.Module, settings: PriorSettings) -> torch.optim.Optimizer:
    fused = next(net.parameters()).device.type in ("cpu", "cuda")
    return fused_adam.Adam(net.parameters(), lr=settings.lr, fused=fused)


def _finish(
    run_dir: Path,
    prior_dir: Path,
    model: LatentVariableModel,
    net: nn.Module,
    dataset: Dataset,
    settings: PriorSettings,
    codes: str,
    step: int,
) -> PriorResult:
    """The fitted prior into the model file (atomically), then the figures."""
    net.requires_grad_(False)
    model.set_prior_fitted(True)
    model.eval()
    ckpt.save_model(model, run_dir)  # the old model file or the new one, never half of one
    _write_settings(prior_dir, settings, codes, step)
    if ckpt.load_config(run_dir).train.figures:
        from .figures import draw_run_figures

        draw_run_figures(run_dir, model, dataset)
    records = ckpt.read_metrics(prior_dir)
    return PriorResult(run_dir, model, records[-1] if records else {})


class _Loop:
    """The epochs of the prior's training: steps, validation, logging and checkpoints."""

    def __init__(
        self,
        prior_dir: Path,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        points: Dataset,
        settings: PriorSettings,
        codes: str,
        prog: Progress,
        n_steps: int,
    ):
        self.prior_dir, self.net, self.optimizer, self.points = prior_dir, net, optimizer, points
        self.settings, self.codes, self.prog, self.n_steps = settings, codes, prog, n_steps
        self.batch_size = min(settings.batch_size, points.size("train"))
        self.steps_per_epoch = points.steps_per_epoch(self.batch_size)
        self.last_checkpoint_step = prog.step if prog.step > 0 else -1
        self.t0 = time.perf_counter() - prog.wall_time_s

    def run(self, progress: bool, run_dir: Path) -> None:
        prog = self.prog
        bar = tqdm(
            total=self.n_steps,
            initial=prog.step,
            desc="train-prior",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        )
        try:
            with _stop_on_signals() as stop:
                try:
                    while prog.step < self.n_steps:
                        acc, skipped = self.epoch(stop, bar)
                        done = prog.step - prog.epoch_start_step >= self.steps_per_epoch
                        if done or prog.step >= self.n_steps:
                            self.end_epoch(acc, skipped, done)
                        else:  # stopped mid-epoch: its skipped steps still count
                            prog.skipped_steps += skipped
                        if stop:
                            break
                except KeyboardInterrupt:
                    raise TrainingInterrupted(
                        f"interrupted; {self.prior_dir} keeps its last checkpoint (step "
                        f"{max(self.last_checkpoint_step, 0)}): continue with "
                        f"`aevb train-prior {run_dir}`"
                    ) from None
        finally:
            bar.close()
        if stop and prog.step < self.n_steps:
            self.checkpoint()
            raise TrainingInterrupted(
                f"interrupted at step {prog.step}; the prior's training state is saved in "
                f"{self.prior_dir}: continue with `aevb train-prior {run_dir}`"
            )

    def epoch(self, stop, bar: tqdm) -> tuple[MeanAccumulator, int]:
        """Steps until the epoch ends, training ends, or a stop; (accumulated NLL, skipped)."""
        prog, net = self.prog, self.net
        acc = MeanAccumulator()
        skipped = run_of_bad = 0
        params = [p for p in net.parameters() if p.requires_grad]
        batches = self.points.train_batches(
            self.batch_size,
            self.settings.seed,
            prog.epoch,
            start_step=prog.step - prog.epoch_start_step,
        )
        net.train()
        for z, _ in batches:
            for group in self.optimizer.param_groups:
                group["lr"] = self.settings.lr
            nll = neg_log_prior(net, z)  # [B]
            loss = nll.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            bad = ~torch.isfinite(norm) | ~torch.isfinite(loss.detach())
            _optimizer_step(self.optimizer, bad)
            acc.add(mask=~bad, neg_log_prior=nll)
            is_bad = bool(bad)
            skipped += is_bad
            run_of_bad = (run_of_bad + 1) * is_bad
            if run_of_bad >= MAX_SKIPPED_STEPS:
                raise AevbError(
                    f"the prior's training diverged at step {prog.step + 1}: {run_of_bad} steps "
                    f"in a row had a non-finite loss or gradient; lower --lr (now "
                    f"{self.settings.lr:g}); the last good checkpoint is kept"
                )
            prog.step += 1
            bar.update(1)
            if acc.n and prog.step % 25 == 0 and not bar.disable:
                bar.set_postfix_str(f"-log p_prior {float(acc.mean('neg_log_prior')):.3f} nats")
            if prog.step >= self.n_steps or stop:
                break
        return acc, skipped

    def end_epoch(self, acc: MeanAccumulator, skipped: int, done: bool) -> None:
        """Validate, log one metrics line, checkpoint."""
        prog = self.prog
        prog.skipped_steps += skipped
        if done:
            prog.epoch += 1
            prog.epoch_start_step = prog.step
            prog.batch_size = self.batch_size
        self.net.eval()
        valid = score(self.net, self.points, "valid", self.settings.eval_batch_size)
        self.net.train()
        train = acc.result()
        record = {
            "epoch": prog.epoch,
            "step": prog.step,
            "train_neg_log_prior": train.get("neg_log_prior"),
            "valid_neg_log_prior": valid["neg_log_prior"],
            "valid_neg_log_prior_se": valid["neg_log_prior_se"],
            "lr": self.settings.lr,
            "skipped_steps": prog.skipped_steps,
            "wall_time_s": round(time.perf_counter() - self.t0, 3),
        }
        if prog.best_valid is None or valid["neg_log_prior"] < prog.best_valid:
            prog.best_valid, prog.best_epoch, prog.best_step = (
                valid["neg_log_prior"],
                prog.epoch,
                prog.step,
            )
        ckpt.append_metrics(self.prior_dir, record)
        self.checkpoint()

    def checkpoint(self) -> None:
        """The settings, then the training state (atomically; non-finite weights refused)."""
        prog = self.prog
        if self.last_checkpoint_step == prog.step:
            return
        prog.wall_time_s = time.perf_counter() - self.t0
        _write_settings(self.prior_dir, self.settings, self.codes, None)
        try:
            ckpt.save_training_state(self.prior_dir, self.net, self.optimizer, asdict(prog))
        except ckpt.NonFiniteStateError:
            raise AevbError(
                f"the prior's weights became non-finite at step {prog.step}; lower --lr (now "
                f"{self.settings.lr:g}); the last good checkpoint is kept"
            ) from None
        self.last_checkpoint_step = prog.step
