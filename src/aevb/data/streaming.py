"""The data contract served from disk, for user data larger than ``--memory-budget-mb``.

:class:`StreamingDataset` answers the same calls as the in-memory :class:`Dataset` and
yields the same batches: training batch b of an epoch is examples
``perm[b * batch_size : (b + 1) * batch_size]`` of :func:`epoch_permutation` (rank r of a
distributed run taking its slice of it; see :func:`train_batch_plan`), evaluation batch b is examples
``[b * batch_size, (b + 1) * batch_size)``. Only the reading differs: a
``torch.utils.data.DataLoader`` with ``--num-workers`` worker processes decodes the examples
of each batch from disk (an explicit ``batch_sampler``, so the order is ours, not the
loader's). The loader is given its own generator, so it never draws from the global torch
RNG, whose stream (sampling noise, dynamic binarisation) must match the in-memory path and
survive a resume.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..errors import DataError
from .base import SPLITS, Dataset, DatasetInfo, eval_batch_plan, train_batch_plan

logger = logging.getLogger(__name__)


class StreamingDataset(Dataset):
    """Three splits read from disk batch by batch; same contract as :class:`Dataset`.

    Args:
        info: what the data is.
        sources: per split, a map-style ``torch.utils.data.Dataset`` whose item i is
            example i of the split, a float32 tensor of shape ``info.shape``.
        labels: per split, integer labels ``[N]`` (kept in memory), or None.
        num_workers: DataLoader worker processes (0 reads in the main process).
        binarize: ``none``, ``dynamic`` or ``threshold`` (see :mod:`aevb.data.binarize`).
        binarize_seed: key of the fixed binarisation of valid/test under ``dynamic``.
    """

    def __init__(
        self,
        info: DatasetInfo,
        sources: dict[str, TorchDataset],
        labels: dict[str, Tensor] | None = None,
        num_workers: int = 2,
        binarize: str = "none",
        binarize_seed: int = 0,
    ):
        if num_workers < 0:
            raise DataError(f"--num-workers must be >= 0, got {num_workers}")
        self.info = info
        self.sources = {s: sources[s] for s in SPLITS}
        self._labels = labels or {}
        self.num_workers = num_workers
        self.binarize = binarize
        self.binarize_seed = binarize_seed
        self.device = torch.device("cpu")
        for s, src in self.sources.items():
            if len(src) == 0:  # type: ignore[arg-type]
                raise DataError(f"split {s} of dataset {info.name} is empty")

    def with_binarize(self, info: DatasetInfo, mode: str, seed: int) -> StreamingDataset:
        """The same files, binarised batch by batch (see :func:`binarize_dataset`)."""
        out = StreamingDataset(info, self.sources, self._labels, self.num_workers, mode, seed)
        return out.to(self.device)

    # --- the contract -------------------------------------------------------------
    def size(self, split: str) -> int:
        return len(self._source(split))  # type: ignore[arg-type]

    def tensor(self, split: str) -> Tensor:
        """The whole split ``[N, *shape]``, read from disk into memory: use sparingly."""
        logger.info("reading the whole %s split of %s from disk", split, self.info.name)
        return torch.cat([x for _, x, _ in self.indexed_eval_batches(split, 1024)])

    def head(self, split: str, n: int) -> Tensor:
        n = min(n, self.size(split))
        if n <= 0:
            return torch.empty(0, *self.info.shape, device=self.device)
        return next(self._read(split, [list(range(n))], eval_split=split))

    def labels(self, split: str) -> Tensor | None:
        self._source(split)
        y = self._labels.get(split)
        return None if y is None else y.to(self.device)

    def to(self, device: torch.device | str) -> StreamingDataset:
        self.device = torch.device(device)
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
        """As :meth:`Dataset.train_batches`, read from disk."""
        self.steps_per_epoch(batch_size)  # checks the batch fits the split
        plan = train_batch_plan(
            self.size("train"), batch_size, seed, epoch, start_step, rank, world_size
        )
        batches = [idx.tolist() for idx in plan]
        y = self.labels("train")
        for idx, x in zip(batches, self._read("train", batches, eval_split=None), strict=True):
            yield self.prepare_train(x), (y[idx] if y is not None else None)

    def prepare_train(self, batch: Tensor) -> Tensor:
        if self.binarize == "dynamic":
            return torch.bernoulli(batch)  # the global RNG, as in the in-memory path
        return batch

    def indexed_eval_batches(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        """As :meth:`Dataset.indexed_eval_batches`, read from disk."""
        n = self.size(split)
        plan = eval_batch_plan(n, batch_size, rank, world_size)
        batches = [list(range(b * batch_size, min((b + 1) * batch_size, n))) for b in plan]
        y = self.labels(split)
        for b, idx, x in zip(
            plan, batches, self._read(split, batches, eval_split=split), strict=True
        ):
            yield b, x, (y[idx] if y is not None else None)

    # --- reading ------------------------------------------------------------------
    def _read(
        self, split: str, batches: Sequence[list[int]], eval_split: str | None
    ) -> Iterator[Tensor]:
        """Batches of ``split`` (lists of example indices), decoded by the worker processes."""
        if not batches:
            return
        with warnings.catch_warnings():  # more workers than CPUs: the user asked for them
            warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
            loader = DataLoader(
                self._source(split),
                batch_sampler=batches,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator(),  # keeps the loader off the global RNG
            )
            read = iter(loader)
        try:
            for idx, x in zip(batches, read, strict=True):
                yield self._binarize(x, split, idx, eval_split).to(self.device, non_blocking=True)
        except DataError as e:  # raised in a worker: keep its message, drop its traceback
            raise DataError(_worker_message(str(e))) from None

    def _binarize(self, x: Tensor, split: str, idx: list[int], eval_split: str | None) -> Tensor:
        from .binarize import binarize_fixed, binarize_threshold

        if self.binarize == "threshold":
            return binarize_threshold(x)
        if self.binarize == "dynamic" and eval_split in ("valid", "test"):
            return binarize_fixed(x, self.binarize_seed, split, torch.tensor(idx))
        return x

    def _source(self, split: str) -> TorchDataset:
        if split not in self.sources:
            raise DataError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return self.sources[split]


def _worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else text
    prefix = "aevb.errors.DataError: "
    return last[len(prefix) :] if last.startswith(prefix) else last
