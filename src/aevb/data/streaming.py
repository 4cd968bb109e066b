"""The data contract served from disk, for user data larger than ``--memory-budget-mb``.

:class:`StreamingDataset` is the second implementation of
:class:`~aevb.data.base.DataSource` (the in-memory :class:`~aevb.data.base.Dataset` is the
first): the batch plans, the labels and the per-batch transform hook are the contract's,
so it yields the same batches: training batch b of an epoch is examples
``perm[b * batch_size : (b + 1) * batch_size]`` of :func:`epoch_permutation` (rank r of a
distributed run taking its slice of it; see :func:`train_batch_plan`), evaluation batch b
is examples ``[b * batch_size, (b + 1) * batch_size)``. Only the reading differs: a
``torch.utils.data.DataLoader`` with ``--num-workers`` worker processes decodes the examples
of each batch from disk (an explicit ``batch_sampler``, so the order is ours, not the
loader's), and the transform's ``fixed`` part is applied batch by batch instead of once.
The loader is given its own generator, so it never draws from the global torch RNG, whose
stream (sampling noise, dynamic binarisation) must match the in-memory path and survive a
resume.
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
from .base import SPLITS, Batch, DatasetInfo, DataSource, with_label_count
from .transforms import IDENTITY, BatchTransform

logger = logging.getLogger(__name__)


class StreamingDataset(DataSource):
    """Three splits read from disk batch by batch; the same contract as the in-memory one.

    Args:
        info: what the data is (after ``transform``).
        sources: per split, a map-style ``torch.utils.data.Dataset`` whose item i is
            example i of the split, a float32 tensor of shape ``info.shape``.
        labels: per split, integer labels ``[N]`` (kept in memory), or None.
        num_workers: DataLoader worker processes (0 reads in the main process).
        transform: the per-batch hook (see :mod:`aevb.data.transforms`).
    """

    def __init__(
        self,
        info: DatasetInfo,
        sources: dict[str, TorchDataset],
        labels: dict[str, Tensor] | None = None,
        num_workers: int = 2,
        transform: BatchTransform | None = None,
    ):
        if num_workers < 0:
            raise DataError(f"--num-workers must be >= 0, got {num_workers}")
        self._labels = dict(labels or {})
        self.info = with_label_count(info, self._labels)
        self.sources = {s: sources[s] for s in SPLITS}
        self.num_workers = num_workers
        self.transform = transform if transform is not None else IDENTITY
        self.device = torch.device("cpu")
        for s, src in self.sources.items():
            if len(src) == 0:  # type: ignore[arg-type]
                raise DataError(f"split {s} of dataset {info.name} is empty")

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self.sources[split])  # type: ignore[arg-type]

    def tensor(self, split: str) -> Tensor:
        """The whole split ``[N, *shape]``, read from disk into memory: use sparingly."""
        logger.info("reading the whole %s split of %s from disk", split, self.info.name)
        return super().tensor(split)

    def to(self, device: torch.device | str) -> StreamingDataset:
        self.device = torch.device(device)
        return self

    def with_transform(self, transform: BatchTransform) -> StreamingDataset:
        """The same files under ``transform``, applied batch by batch."""
        if not self.transform.identity:
            raise DataError(
                f"{self.info.name} is already transformed ({self.transform.name}); "
                f"{transform.name} cannot be applied on top of it"
            )
        out = StreamingDataset(
            transform.info(self.info), self.sources, self._labels, self.num_workers, transform
        )
        return out.to(self.device)

    def _read(self, split: str, batches: Sequence[Batch]) -> Iterator[Tensor]:
        """Batches of ``split`` (index batches), decoded by the worker processes."""
        self._check_split(split)
        if not batches:
            return
        lists = [list(b) if isinstance(b, range) else b.tolist() for b in batches]
        with warnings.catch_warnings():  # more workers than CPUs: the user asked for them
            warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
            loader = DataLoader(
                self.sources[split],
                batch_sampler=lists,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator(),  # keeps the loader off the global RNG
            )
            read = iter(loader)
        try:
            for idx, x in zip(lists, read, strict=True):
                x = self.transform.fixed(x, split, torch.tensor(idx, dtype=torch.int64))
                yield x.to(self.device, non_blocking=True)
        except DataError as e:  # raised in a worker: keep its message, drop its traceback
            raise DataError(_worker_message(str(e))) from None


def _worker_message(text: str) -> str:
    """The original message of an error re-raised from a DataLoader worker."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else text
    prefix = "aevb.errors.DataError: "
    return last[len(prefix) :] if last.startswith(prefix) else last
