"""The data contract: what every source hands the trainer.

Whatever the source, a :class:`Dataset` holds three splits (``train``, ``valid``,
``test``) of float32 tensors ``[N, *shape]`` (``shape`` is ``(D,)`` for vectors and
``(C, H, W)`` for images), values in the documented ``info.value_range``, optional integer
labels ``[N]``, and a JSON-able ``info.transform`` recorded in the run's config so later
commands reproduce it.

Batches are pairs ``(x, y)``: ``x`` ``[b, *shape]`` and its labels ``y`` ``[b]`` (int64),
or None for unlabelled data. ``train_batches`` draws a fresh permutation of the training
split from (seed, epoch) alone, so a resumed run and every rank of a distributed run
agree on it; ``eval_batches`` walks a split in order and covers every example exactly
once. ``prepare_train`` is the per-use transform of a training batch (dynamic binarisation).

In memory (every named dataset, and user data under ``--memory-budget-mb``) a split is
one tensor, moved to the accelerator by :meth:`Dataset.to`, and batches are slices of it.
Above the budget, :class:`~aevb.data.streaming.StreamingDataset` answers the same calls
with the same batches, read from disk by DataLoader workers; code that needs only a few
examples should ask for :meth:`Dataset.head` rather than the whole :meth:`Dataset.tensor`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: documented for the user and checked by the trainer.

    Attributes:
        name: registry name or the user's path.
        shape: shape of one example.
        value_range: (low, high) bounds of the values.
        has_labels: whether integer class labels come with the examples.
        likelihood: the decoder likelihood the data suits (used for ``--likelihood auto``).
        description: one line for ``aevb datasets`` and the README.
        transform: JSON-able record of the preprocessing applied (reproduced by later commands).
    """

    name: str
    shape: tuple[int, ...]
    value_range: tuple[float, float]
    has_labels: bool
    likelihood: str
    description: str = ""
    transform: dict[str, Any] = field(default_factory=dict)


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the training examples in ``epoch``: a function of (seed, epoch) only.

    Returns:
        ``[n]`` int64 permutation (on the CPU).
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**64)  # any seed >= 0
    return torch.randperm(n, generator=g)


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous shard [start, stop) of ``n`` items for ``rank``; shards cover n exactly once."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


def train_batch_plan(
    n: int, batch_size: int, seed: int, epoch: int, start_step: int, rank: int, world_size: int
) -> Iterator[Tensor]:
    """Indices of this rank's part of each training batch of ``epoch`` (every source uses it).

    Global batch b is ``perm[b * batch_size : (b + 1) * batch_size]`` of
    :func:`epoch_permutation`; rank r takes its contiguous slice of it. The last incomplete
    global batch is dropped; ``start_step`` skips the first batches (resuming mid-epoch).

    Yields:
        ``[batch_size // world_size]``-ish int64 index tensors (CPU).
    """
    perm = epoch_permutation(n, seed, epoch)
    lo, hi = shard_range(batch_size, rank, world_size)
    for b in range(start_step, n // batch_size):
        yield perm[b * batch_size : (b + 1) * batch_size][lo:hi]


def eval_batch_plan(n: int, batch_size: int, rank: int, world_size: int) -> range:
    """Indices of the evaluation batches rank r scores: a contiguous range of whole batches.

    Batch b is always examples ``[b * batch_size, min((b + 1) * batch_size, n))``, whatever
    the world size, so per-batch seeding makes sharded evaluation equal one process's.
    """
    lo, hi = shard_range(-(-n // batch_size), rank, world_size)
    return range(lo, hi)


class Dataset:
    """Three in-memory splits held as tensors (on the accelerator when there is one)."""

    def __init__(
        self,
        info: DatasetInfo,
        splits: dict[str, Tensor],
        labels: dict[str, Tensor] | None = None,
    ):
        self.info = info
        self.splits = {s: splits[s] for s in SPLITS}
        self._labels = labels or {}
        for s, x in self.splits.items():
            if x.shape[1:] != tuple(info.shape):
                raise DataError(
                    f"split {s} has examples of shape {tuple(x.shape[1:])}, expected {info.shape}"
                )
            if len(x) == 0:
                raise DataError(f"split {s} of dataset {info.name} is empty")

    # --- what the trainer and evaluator use -----------------------------------------
    def size(self, split: str) -> int:
        return len(self._split(split))

    def tensor(self, split: str) -> Tensor:
        """The whole split ``[N, *shape]`` (as used by the model)."""
        return self._split(split)

    def labels(self, split: str) -> Tensor | None:
        """Integer labels ``[N]`` of a split, or None."""
        self._split(split)
        return self._labels.get(split)

    def head(self, split: str, n: int) -> Tensor:
        """The first ``n`` examples of a split ``[min(n, N), *shape]`` (cheap for every source)."""
        return self._split(split)[:n]

    def head_labels(self, split: str, n: int) -> Tensor | None:
        """The labels of :meth:`head` ``[min(n, N)]``, or None."""
        y = self.labels(split)
        return None if y is None else y[:n]

    def to(self, device: torch.device | str) -> Dataset:
        self.splits = {s: x.to(device) for s, x in self.splits.items()}
        self._labels = {s: y.to(device) for s, y in self._labels.items()}
        return self

    def train_batches(
        self,
        batch_size: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """The training batches ``(x, y)`` of ``epoch``, x ``[batch_size // world_size, *shape]``.

        Global batch b is ``perm[b * batch_size : (b + 1) * batch_size]`` of
        :func:`epoch_permutation`; rank r takes its contiguous slice of it. The last
        incomplete global batch is dropped, so every step sees ``batch_size`` examples.
        ``start_step`` skips the first batches (resuming mid-epoch).
        """
        x, y = self.splits["train"], self._labels.get("train")
        self.steps_per_epoch(batch_size)  # checks the batch fits the split
        plan = train_batch_plan(len(x), batch_size, seed, epoch, start_step, rank, world_size)
        for idx in plan:
            idx = idx.to(x.device)
            yield self.prepare_train(x[idx]), (y[idx] if y is not None else None)

    def steps_per_epoch(self, batch_size: int) -> int:
        n = self.size("train")
        if batch_size > n:
            raise DataError(
                f"--batch-size {batch_size} exceeds the {n} training examples; "
                f"use --batch-size {n} or less"
            )
        return n // batch_size

    def prepare_train(self, batch: Tensor) -> Tensor:
        """Per-use transform of a training batch (identity; dynamic binarisation overrides it)."""
        return batch

    def eval_batches(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[Tensor, Tensor | None]]:
        """A split in order, in batches ``(x, y)``; every example exactly once over all ranks."""
        for _, x, y in self.indexed_eval_batches(split, batch_size, rank, world_size):
            yield x, y

    def indexed_eval_batches(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        """``(batch_index, x, y)``; rank r takes a contiguous range of whole batches.

        Batch b is always examples ``[b * batch_size, (b + 1) * batch_size)``, whatever the
        world size, so per-batch seeding makes sharded evaluation equal one process's.
        """
        x, y = self._split(split), self._labels.get(split)
        for b in eval_batch_plan(len(x), batch_size, rank, world_size):
            sl = slice(b * batch_size, min((b + 1) * batch_size, len(x)))
            yield b, x[sl], (y[sl] if y is not None else None)

    def _split(self, split: str) -> Tensor:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return self.splits[split]


def check_finite(x: Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{name} contains {bad} NaN or inf values; clean or impute them first")


def random_splits(
    x: Tensor, y: Tensor | None, valid_fraction: float, test_fraction: float, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Hold out valid and test parts of a source that has no split, reproducibly from ``seed``."""
    parts = split_indices(len(x), valid_fraction, test_fraction, seed)
    xs = {s: x[i] for s, i in parts.items()}
    ys = {s: y[i] for s, i in parts.items()} if y is not None else None
    return xs, ys


def holdout_valid(
    x: Tensor, y: Tensor | None, valid_fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None]]:
    """Split an official training set into (train, valid), reproducibly from ``seed``.

    For sources with an official test split but no validation split (MNIST, CIFAR-10): a
    random ``valid_fraction`` of the training examples (``--valid-fraction``, drawn with
    ``--split-seed``) is held out; both parts keep the original order.
    """
    n = len(x)
    if not 0 < valid_fraction < 1:
        raise DataError("--valid-fraction must be in (0, 1)")
    n_valid = max(1, round(n * valid_fraction))
    if n - n_valid < 1:
        raise DataError(f"{n} examples are too few to hold out a validation split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid_idx = perm[:n_valid].sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[valid_idx] = False
    train_idx = keep.nonzero().squeeze(1)

    def take(i: Tensor) -> tuple[Tensor, Tensor | None]:
        return x[i], (y[i] if y is not None else None)

    return take(train_idx), take(valid_idx)


def split_indices(
    n: int, valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, Tensor]:
    """Indices ``[n_split]`` of the train, valid and test parts of ``n`` unsplit examples.

    A permutation drawn from ``seed``: its first ``round(n * test_fraction)`` entries are
    the test split, the next ``round(n * valid_fraction)`` the validation split, the rest
    training (each in permutation order). The same for in-memory and from-disk sources.
    """
    in_range = 0 < valid_fraction < 1 and 0 < test_fraction < 1
    if not (in_range and valid_fraction + test_fraction < 1):
        raise DataError("--valid-fraction and --test-fraction must be in (0, 1) and sum below 1")
    n_valid = max(1, round(n * valid_fraction))
    n_test = max(1, round(n * test_fraction))
    if n - n_valid - n_test < 1:
        raise DataError(f"{n} examples are too few to hold out a validation and a test split")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return {
        "train": perm[n_test + n_valid :],
        "valid": perm[n_test : n_test + n_valid],
        "test": perm[:n_test],
    }
