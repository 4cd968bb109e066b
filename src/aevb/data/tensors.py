"""Data already in Python: a tensor (or array), or any map-style ``torch.utils.data.Dataset``.

Example::

    import torch, aevb
    from aevb.data import from_tensor

    x = torch.rand(1000, 1, 28, 28)            # [N, *shape]
    ds = from_tensor(x, labels=torch.randint(0, 10, (1000,)))
    aevb.train(config, dataset=ds)              # see aevb.train.train
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..errors import DataError
from .base import Dataset, DatasetInfo, check_finite, random_splits


def from_tensor(
    x: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | None = None,
    *,
    name: str = "tensor",
    likelihood: str | None = None,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Wrap ``N`` examples ``[N, *shape]`` as a :class:`Dataset` with a seeded 80/10/10 split.

    Args:
        x: the examples, any numeric dtype (converted to float32, values kept as they are).
        labels: optional integer labels ``[N]``.
        name: name recorded in the run.
        likelihood: suggested decoder; default bernoulli if all values lie in [0, 1],
            else ``gaussian-pixel``.
        valid_fraction, test_fraction, seed: the held-out split.

    Raises:
        DataError: fewer than 2 dimensions, non-numeric values, NaN/inf, labels of the
            wrong length.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if x.dtype == torch.bool or x.is_complex() or x.ndim < 2:
        raise DataError(
            f"expected a real tensor [N, *shape] of N examples, got {x.dtype} "
            f"of shape {tuple(x.shape)}"
        )
    x = x.detach().to("cpu", torch.float32).contiguous()
    check_finite(x, name)
    y = None
    if labels is not None:
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if y.shape != (len(x),) or y.is_floating_point():
            raise DataError(f"labels must be integers [{len(x)}], got {y.dtype} {tuple(y.shape)}")
        y = y.to("cpu", torch.int64)
    splits, split_labels = random_splits(x, y, valid_fraction, test_fraction, seed)
    lo, hi = float(x.min()), float(x.max())
    if likelihood is None:
        likelihood = "bernoulli" if lo >= 0.0 and hi <= 1.0 else "gaussian-pixel"
    info = DatasetInfo(
        name,
        tuple(x.shape[1:]),
        (lo, hi),
        y is not None,
        likelihood,
        f"{len(x)} examples given from Python",
        {"kind": "tensor", "split_seed": seed},
    )
    return Dataset(info, splits, split_labels)


def from_torch_dataset(dataset: TorchDataset, *, batch_size: int = 256, **kwargs: Any) -> Dataset:
    """Read a map-style ``torch.utils.data.Dataset`` into memory, then :func:`from_tensor`.

    Items are either an example tensor ``[*shape]`` or a pair ``(example, label)`` (as
    torchvision datasets return) with an integer label.

    Args:
        dataset: supports ``len`` and integer indexing.
        batch_size: items collated at a time while reading.
        **kwargs: passed to :func:`from_tensor` (``name``, ``likelihood``, split fractions, seed).
    """
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            "from_torch_dataset needs a map-style dataset with len(); "
            "collect an iterable one into a tensor and call from_tensor"
        ) from None
    if n == 0:
        raise DataError("the dataset is empty")
    xs: list[Tensor] = []
    ys: list[Tensor] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    for batch in loader:
        if isinstance(batch, (list, tuple)):
            if len(batch) != 2:
                raise DataError("dataset items must be an example or a pair (example, label)")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        else:
            xs.append(torch.as_tensor(batch))
    x = torch.cat(xs)
    labels = torch.cat(ys) if ys else None
    if x.ndim == 1:
        x = x.unsqueeze(1)
    return from_tensor(x, labels, **kwargs)
