"""Experiment tracking: what the trainer reports as it goes, to whoever listens.

The trainer calls one small object, a :class:`Tracker`, at three points and knows nothing
else about it: every ``log_every`` steps (:meth:`Tracker.log_steps`, the training loss over
the steps since the last call), at the end of every epoch (:meth:`Tracker.log_epoch`, the
record it also appends to ``metrics.jsonl``) and once when training stops
(:meth:`Tracker.close`). :class:`NullTracker` does nothing and is what runs by default;
:class:`TensorBoardTracker` (``--tensorboard``) writes TensorBoard event files into
``RUN/tensorboard/`` with PyTorch's own ``torch.utils.tensorboard.SummaryWriter``.

TensorBoard tags (the names of metrics.jsonl, so the two agree number for number):

* ``neg_elbo/train``, ``neg_elbo/valid``, ``kl/...`` (the rate), ``recon_nll/...`` (the
  distortion), and every other ``train_X`` / ``valid_X`` value as ``X/train`` / ``X/valid``;
  vectors one scalar per entry (``kl_per_dim/valid/3`` is latent dimension 3's KL);
* ``schedule/lr``, ``schedule/beta``, ``schedule/tau``, ...: the values in force at the
  epoch's last step;
* ``progress/epoch``, ``progress/skipped_steps``, ``progress/wall_time_s``;
* ``steps/loss``, ``steps/neg_elbo``: the mean over the last ``log_every`` training steps
  (under ``--nproc N``, rank 0's share of each batch);
* images ``samples`` (64 prior samples, the same z every epoch) and ``reconstructions``
  (validation examples above their reconstructions), or the same pictures as figures for
  data that are not images.

The global step of every value is the number of optimiser steps taken, as in
metrics.jsonl. Only rank 0 writes. A resumed run appends a new event file to the same
folder, and marks that events after the resumed checkpoint are void (SummaryWriter's
``purge_step``), so TensorBoard shows one curve without the steps a crash repeated.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from .config import RunConfig
    from .data.base import Dataset

TENSORBOARD_DIR = "tensorboard"
INSTALL_HINT = "pip install 'aevb[tensorboard]'"
# What the image summaries show: prior samples and (validation) reconstructions.
IMAGE_SAMPLES = 64
IMAGE_RECONSTRUCTIONS = 16
IMAGE_SEED = 0


class Tracker:
    """What the trainer calls; this base class ignores everything (it is the null tracker)."""

    active = False

    def log_steps(self, step: int, means: dict[str, float]) -> None:
        """Training values averaged over the steps since the last call (``loss``, ``neg_elbo``)."""

    def log_epoch(
        self,
        step: int,
        record: dict[str, Any],
        schedules: Iterable[str] = (),
        model: nn.Module | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        """The epoch's metrics record (as in metrics.jsonl) and pictures of the model."""

    def close(self) -> None:
        """Flush and release whatever the tracker holds."""


NullTracker = Tracker


def check_tensorboard() -> None:
    """Raise a one-line :class:`ConfigError` saying how to install TensorBoard if it is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL_HINT}"
        ) from None


def check_config(config: RunConfig) -> None:
    """Fail before anything is written when the config asks for a tracker that cannot run."""
    if config.train.tensorboard:
        check_tensorboard()


def build_tracker(config: RunConfig, run_dir: Path, step: int, is_main: bool) -> Tracker:
    """The tracker a run asks for (:class:`NullTracker` on ranks other than 0).

    Args:
        step: the step training starts from (0, or the resumed checkpoint's step).
    """
    if not (is_main and config.train.tensorboard):
        return NullTracker()
    return TensorBoardTracker(Path(run_dir) / TENSORBOARD_DIR, step)


def remove_event_files(run_dir: Path) -> None:
    """Delete the event files of an earlier attempt at a run that starts afresh."""
    folder = Path(run_dir) / TENSORBOARD_DIR
    if folder.is_dir():
        for p in folder.glob("events.out.tfevents.*"):
            p.unlink(missing_ok=True)


def scalar_tags(record: dict[str, Any], schedules: Iterable[str] = ()) -> dict[str, float]:
    """A metrics record as TensorBoard scalars ``{tag: value}`` (see the module docstring).

    Non-numbers (None, strings) are left out; lists become one scalar per entry.

    Example:
        >>> scalar_tags({"step": 5, "train_kl": 1.5, "valid_kl_per_dim": [0.5, 1.0], "lr": 1e-3},
        ...             schedules=["lr"])
        {'kl/train': 1.5, 'kl_per_dim/valid/0': 0.5, 'kl_per_dim/valid/1': 1.0, 'schedule/lr': 0.001}
    """
    schedules = set(schedules)
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "step":
            continue
        split, _, name = key.partition("_")
        if split in ("train", "valid") and name:
            tag = f"{name}/{split}"
        elif key in schedules:
            tag = f"schedule/{key}"
        else:
            tag = f"progress/{key}"
        if isinstance(value, (list, tuple)):
            for j, v in enumerate(value):
                if _is_number(v):
                    out[f"{tag}/{j}"] = float(v)
        elif _is_number(value):
            out[tag] = float(value)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


class TensorBoardTracker(Tracker):
    """Scalars and image grids into TensorBoard event files under ``log_dir``.

    Args:
        log_dir: the folder (``RUN/tensorboard``); created if needed.
        step: the step training (re)starts from: events of an earlier attempt logged after it
            are purged from TensorBoard's view.
    """

    active = True

    def __init__(self, log_dir: Path, step: int = 0):
        check_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        # Values are logged at the count of steps taken, so those of the resumed state (<= step)
        # stay and those a crash left beyond it go.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=step + 1 if step else None)

    def log_steps(self, step: int, means: dict[str, float]) -> None:
        for name, value in means.items():
            if _is_number(value):
                self.writer.add_scalar(f"steps/{name}", value, step)

    def log_epoch(
        self,
        step: int,
        record: dict[str, Any],
        schedules: Iterable[str] = (),
        model: nn.Module | None = None,
        dataset: Dataset | None = None,
    ) -> None:
        for tag, value in scalar_tags(record, schedules).items():
            self.writer.add_scalar(tag, value, step)
        if model is not None and dataset is not None:
            self._log_pictures(step, model, dataset)
        self.writer.flush()

    def _log_pictures(self, step: int, model: nn.Module, dataset: Dataset) -> None:
        """Prior samples (the same z at every epoch) and validation reconstructions.

        Drawn on a forked RNG with their own generator: tracking never changes training.
        """
        import torch

        from .figures import examples_figure, image_grid, is_image

        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        shape = tuple(dataset.info.shape)
        vr = dataset.info.value_range
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            gen = torch.Generator(device=device).manual_seed(IMAGE_SEED)
            samples = model.sample(IMAGE_SAMPLES, generator=gen)
            split = "valid" if dataset.size("valid") else "train"
            x = dataset.head(split, IMAGE_RECONSTRUCTIONS).to(device)
            y = dataset.head_labels(split, IMAGE_RECONSTRUCTIONS)
            recon = model.reconstruct(x, y.to(device) if y is not None else None)
        model.train(was_training)
        if is_image(shape):
            ncol = int(math.ceil(math.sqrt(len(samples))))
            grid = image_grid(samples, ncol, value_range=vr)
            self.writer.add_image("samples", _channels(grid), step, dataformats="HWC")
            ncol = min(8, len(x))
            rows = []  # a row of originals above a row of their reconstructions
            for i in range(0, len(x) - len(x) % ncol, ncol):
                rows += [x[i : i + ncol], recon[i : i + ncol]]
            grid = image_grid(torch.cat(rows), ncol, value_range=vr)
            self.writer.add_image("reconstructions", _channels(grid), step, dataformats="HWC")
        else:
            self.writer.add_figure(
                "samples", examples_figure(samples, vr, "samples from the prior"), step
            )
            self.writer.add_figure(
                "reconstructions", examples_figure(recon, vr, "reconstructions"), step
            )

    def close(self) -> None:
        self.writer.close()


def _channels(grid):
    """A ``[H, W, C]`` grid with 1, 3 or 4 channels as TensorBoard takes it (gray -> RGB)."""
    import numpy as np

    if grid.shape[-1] == 1:
        return np.repeat(grid, 3, axis=-1)
    return grid[..., :3]
