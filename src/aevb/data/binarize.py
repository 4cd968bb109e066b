"""Binarisation of grayscale data in [0, 1] (``--binarize dynamic|threshold``), for any source.

* ``threshold``: every split becomes ``x > 0.5``, once.
* ``dynamic`` (Salakhutdinov & Murray 2008; the usual protocol for MNIST VAEs): every time
  a training example is used, each pixel is drawn afresh, ``b ~ Bernoulli(x)``, from the
  global torch RNG (so a resumed run, whose RNG state is restored, continues bit-exactly);
  the validation and test splits are drawn once, reproducibly: pixel j of example i is
  ``u(seed, i, j) < x`` with ``u`` a counter-based uniform (SplitMix64). Because ``u``
  depends only on (seed, example, pixel), the in-memory and the from-disk paths binarise
  every example identically, whatever the batch boundaries. The training split keeps its
  grey levels (``tensor("train")``, ``eval_batches("train")``): a Bernoulli decoder then
  scores it by cross-entropy, the expectation of the binarised log-likelihood.

Both data implementations binarise through the one per-batch hook of the data contract,
:class:`Binarize` (see :mod:`aevb.data.transforms`): its ``fixed`` part on every example
read, its ``per_use`` part on every training batch.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .base import DatasetInfo, DataSource
from .transforms import BatchTransform

MODES = ("none", "dynamic", "threshold")
_SPLIT_SALT = {"train": 0x7A3F, "valid": 0x1B2C, "test": 0x5D4E}
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def fixed_uniforms(seed: int, index: Tensor, numel: int) -> Tensor:
    """Counter-based uniforms in [0, 1): ``u[i, j]`` depends only on (seed, index[i], j).

    SplitMix64 (Steele et al. 2014) of the counter ``index * numel + j``, keyed by ``seed``;
    the top 24 bits give a float32 exactly.

    Args:
        seed: the key.
        index: ``[n]`` int64 example indices.
        numel: values per example.

    Returns:
        ``[n, numel]`` float32 on the CPU.
    """
    idx = index.cpu().numpy().astype(np.uint64)
    key = np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    out = np.empty((len(idx), numel), dtype=np.float32)
    rows = max(1, (1 << 20) // max(numel, 1))  # bound the temporaries to ~1M values
    j = np.arange(numel, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, len(idx), rows):
            z = idx[lo : lo + rows, None] * np.uint64(numel) + j[None, :]
            z = (z + key) * np.uint64(0x9E3779B97F4A7C15)
            z ^= z >> np.uint64(30)
            z *= np.uint64(0xBF58476D1CE4E5B9)
            z ^= z >> np.uint64(27)
            z *= np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            out[lo : lo + rows] = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
    return torch.from_numpy(out)


def split_seed(seed: int, split: str) -> int:
    """The key of the fixed binarisation of ``split``."""
    return seed * 65_537 + _SPLIT_SALT[split]


def binarize_fixed(x: Tensor, seed: int, split: str, index: Tensor) -> Tensor:
    """Bernoulli(x) drawn reproducibly per example: ``[n, *shape]`` in [0, 1] -> {0, 1}.

    ``index`` ``[n]`` are the examples' positions in their split.
    """
    u = fixed_uniforms(split_seed(seed, split), index, x[0].numel() if len(x) else 0)
    return (u.view_as(x).to(x.device) < x).to(x.dtype)


def binarize_threshold(x: Tensor) -> Tensor:
    """``x > 0.5`` as float: ``[n, *shape]`` -> {0, 1}."""
    return (x > 0.5).to(x.dtype)


def binarized_info(info: DatasetInfo, mode: str, seed: int) -> DatasetInfo:
    """``info`` after binarisation: values {0, 1}, Bernoulli likelihood, the step recorded."""
    lo, hi = info.value_range
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"--binarize {mode} needs values in [0, 1] but {info.name} ranges over "
            f"[{lo:g}, {hi:g}]; drop --binarize or rescale the data"
        )
    transform = {**info.transform, "binarize": mode}
    if mode == "dynamic":
        transform["binarize_seed"] = seed
    return replace(
        info,
        value_range=(0.0, 1.0),
        likelihood="bernoulli",
        description=f"{info.description}; binarized ({mode})",
        transform=transform,
    )


class Binarize(BatchTransform):
    """``--binarize threshold|dynamic`` as the data contract's per-batch hook.

    ``fixed``: threshold -> ``x > 0.5`` on every split; dynamic -> the validation and test
    examples drawn once by :func:`binarize_fixed` (the training split keeps its grey
    levels). ``per_use``: dynamic -> ``b ~ Bernoulli(x)`` for every training batch, from
    the global RNG of the batch's device (saved in training checkpoints: resume is exact).
    """

    name = "binarize"

    def __init__(self, mode: str, seed: int):
        if mode not in MODES or mode == "none":
            raise DataError(f"--binarize must be one of {list(MODES)}, got {mode!r}")
        self.mode, self.seed = mode, seed

    def info(self, info: DatasetInfo) -> DatasetInfo:
        return binarized_info(info, self.mode, self.seed)

    def fixed(self, x: Tensor, split: str, index: Tensor) -> Tensor:
        if self.mode == "threshold":
            return binarize_threshold(x)
        if split in ("valid", "test"):
            return binarize_fixed(x, self.seed, split, index)
        return x

    def per_use(self, x: Tensor) -> Tensor:
        return torch.bernoulli(x) if self.mode == "dynamic" else x


def binarize_dataset(ds: DataSource, mode: str, seed: int) -> DataSource:
    """Apply ``--binarize mode`` to a loaded dataset (in memory or read from disk).

    Args:
        ds: data with values in [0, 1].
        mode: one of ``none``, ``dynamic``, ``threshold``.
        seed: key of the fixed binarisation of the valid and test splits (dynamic).

    Raises:
        DataError: values outside [0, 1], or an unknown mode.
    """
    if mode == "none":
        return ds
    return ds.with_transform(Binarize(mode, seed))
