"""The one per-batch transform hook of the data contract, shared by every source.

A :class:`BatchTransform` has two parts, and both data implementations (in memory,
:class:`~aevb.data.base.Dataset`; from disk, :class:`~aevb.data.streaming.StreamingDataset`)
call the same functions, so they deliver the same numbers:

* ``fixed(x, split, index)`` — a deterministic function of the split, the examples'
  positions in it and their values, applied to every example read (threshold
  binarisation; the once-drawn binarisation of the validation and test splits under
  ``--binarize dynamic``; the check that dequantised data lie on the 8-bit grid). The
  in-memory dataset applies it once to whole splits, the from-disk one batch by batch.
* ``per_use(x)`` — drawn afresh for every training batch from the global torch RNG,
  which training checkpoints save, so ``--resume`` stays bit-exact (dynamic
  binarisation; uniform dequantisation).

``info(info)`` says what the data is afterwards (value range, suggested likelihood, and
the step recorded in ``info.transform`` for later commands).

Transforms here: the identity and :class:`Dequantize` (``--dequantize uniform``);
binarisation (``--binarize``) lives with its math in :mod:`aevb.data.binarize`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ..errors import DataError

if TYPE_CHECKING:
    from .base import DatasetInfo

EIGHT_BIT = 255  # data x = v / 255, v = 0..255


class BatchTransform:
    """The identity; subclasses override the parts they change."""

    name: ClassVar[str] = "none"

    @property
    def identity(self) -> bool:
        return type(self) is BatchTransform

    def info(self, info: DatasetInfo) -> DatasetInfo:
        """What the data is after the transform."""
        return info

    def fixed(self, x: Tensor, split: str, index: Tensor) -> Tensor:
        """Deterministic part: ``[n, *shape]`` examples at positions ``index`` ``[n]`` of ``split``."""
        return x

    def per_use(self, x: Tensor) -> Tensor:
        """Random part, drawn for every training batch ``[b, *shape]`` from the global RNG."""
        return x


IDENTITY = BatchTransform()


def on_8bit_grid(x: Tensor, atol: float = 1e-6) -> bool:
    """Whether every value is some v/255 with v an integer in 0..255 (to ``atol``)."""
    if x.numel() == 0:
        return True
    scaled = x.detach().double() * EIGHT_BIT
    in_range = bool((scaled >= -atol).all()) and bool((scaled <= EIGHT_BIT + atol).all())
    return in_range and bool(((scaled - scaled.round()).abs() <= atol * EIGHT_BIT).all())


class Dequantize(BatchTransform):
    """Uniform dequantisation of 8-bit data x = v/255 (``--dequantize uniform``).

    Every time a training example is used, each value becomes ``x + (u - 1/2)/255`` with
    ``u ~ U(0, 1)``: a point drawn uniformly in its bin ``[(v - 1/2)/255, (v + 1/2)/255)``,
    the bins of :func:`~aevb.distributions.log_discretized_logistic_mixture`. A continuous
    density p trained on such points defines the discrete model
    ``P(v) = integral of p over v's bin`` (Theis, van den Oord & Bethge 2016,
    https://arxiv.org/abs/1511.01844), whose bits/dim ``aevb evaluate`` bounds (see
    :func:`aevb.estimators.dequantized_bits_per_dim`). The validation and test splits keep
    their grid values: evaluation draws its own seeded noise.
    """

    name = "dequantize"

    def info(self, info: DatasetInfo) -> DatasetInfo:
        lo, hi = info.value_range
        half = 0.5 / EIGHT_BIT
        return replace(
            info,
            value_range=(lo - half, hi + half),
            likelihood="gaussian-pixel",
            description=f"{info.description}; uniformly dequantised",
            transform={**info.transform, "dequantize": "uniform"},
        )

    def fixed(self, x: Tensor, split: str, index: Tensor) -> Tensor:
        if not on_8bit_grid(x):
            raise DataError(
                "--dequantize uniform needs 8-bit data stored as v/255 (v = 0..255), but "
                f"the {split} split has other values; drop --dequantize"
            )
        return x

    def per_use(self, x: Tensor) -> Tensor:
        # The global RNG of the batch's device: saved in training checkpoints.
        return x + (torch.rand_like(x) - 0.5) / EIGHT_BIT
