"""Running means of per-example values, kept on the device until one reduction at the end.

Per-example quantities are accumulated as sums and sums of squares (float64), so every
reported mean comes with its standard error ``sqrt(var / n)``. The example count is a
device tensor too: a training step that is skipped (non-finite loss) adds nothing, with
no host synchronisation. Under ``torch.distributed`` :func:`all_reduce_` sums the state
of every rank in one collective.
"""

from __future__ import annotations

from itertools import groupby

import torch
from torch import Tensor


class MeanAccumulator:
    """Running sums of per-example values ``[B]`` or ``[B, D]``; no host sync until :meth:`result`.

    Scalars given together are stacked into one ``[K, B]`` tensor, so a training step
    costs a handful of kernels whatever K.
    """

    MAX_PENDING = 512  # deferred batches kept before they are summed anyway

    def __init__(self) -> None:
        # key tuple -> [sum [K, ...], sum of squares [K, ...]]
        self._groups: dict[tuple[str, ...], list[Tensor]] = {}
        self._count: Tensor | None = None
        # add_later's batches not summed yet: (keys, values [K, B], skip flag or None)
        self._pending: list[tuple[tuple[str, ...], Tensor, Tensor | None]] = []

    @property
    def n(self) -> int:
        """Examples added so far (a host sync)."""
        self._flush()
        return 0 if self._count is None else int(round(float(self._count)))

    def add_later(self, skip: Tensor | None = None, **values: Tensor) -> None:
        """:meth:`add` for per-example scalars ``[B]``, summed at the next read of the state.

        A training step calls this every step: it costs one tensor operation (the values
        stacked, no autograd graph kept), where :meth:`add` costs about ten (each a few µs
        on a CPU whatever its size). The batches kept are summed together when anything
        reads the sums, the count or the state, or when :data:`MAX_PENDING` are waiting.

        Args:
            skip: optional 0-dim bool tensor, True where the batch counts for nothing
                (:meth:`add`'s ``mask`` negated: a training step's "skipped" flag as is).
        """
        if not values:
            return
        with torch.no_grad():
            stacked = torch.stack(list(values.values()))
        self._pending.append((tuple(values), stacked, skip))
        if len(self._pending) >= self.MAX_PENDING:
            self._flush()

    def _flush(self) -> None:
        """Sum the batches :meth:`add_later` kept: a few operations for all of them."""
        pending, self._pending = self._pending, []
        # runs of batches with the same keys and batch size, in the order they came
        for (keys, _), run in groupby(pending, key=lambda e: (e[0], e[1].shape)):
            self._add_run(keys, list(run))

    def _add_run(self, keys: tuple[str, ...], run: list) -> None:
        first = run[0][1]
        with torch.no_grad():
            values = torch.stack([v for _, v, _ in run]).to(torch.float64)  # [n, K, B]
            if self._count is None:
                self._count = torch.zeros((), dtype=torch.float64, device=first.device)
            self._count = self._count + len(run) * first.shape[1]
            if any(skip is not None for _, _, skip in run):
                no = torch.zeros((), dtype=torch.bool, device=first.device)
                skipped = torch.stack([no if skip is None else skip for _, _, skip in run])
                self._count = torch.sub(self._count, skipped.sum(), alpha=first.shape[1])
                values = torch.where(skipped[:, None, None], 0.0, values)
            self._accumulate(keys, values.sum((0, 2)), values.pow(2).sum((0, 2)))

    def add(self, mask: Tensor | None = None, **values: Tensor) -> None:
        """Add per-example tensors ``[B, ...]`` (all with the same B).

        Args:
            mask: optional 0-dim bool tensor; when False the batch counts for nothing
                (its values, even NaN, are dropped) — without a host sync.
        """
        if not values:
            return
        self._flush()  # keep the order of the batches added
        with torch.no_grad():  # (a training step's values: no detach per value)
            self._add(mask, values)

    def _add(self, mask: Tensor | None, values: dict[str, Tensor]) -> None:
        # A training step calls this every step: as few tensor operations as it takes
        # (each costs a few µs on a CPU, whatever its size).
        first = next(iter(values.values()))
        b = first.shape[0]
        if self._count is None:
            self._count = torch.zeros((), dtype=torch.float64, device=first.device)
        self._count = self._count + b if mask is None else torch.add(self._count, mask, alpha=b)
        scalars = [k for k, v in values.items() if v.dim() == 1]
        if scalars:
            stacked = torch.stack([values[k] for k in scalars]).to(torch.float64)
            if mask is not None:
                stacked = torch.where(mask, stacked, 0.0)
            self._accumulate(tuple(scalars), stacked.sum(1), stacked.pow(2).sum(1))
        for k, v in values.items():
            if v.dim() > 1:
                v = v.to(torch.float64)
                if mask is not None:
                    v = torch.where(mask, v, 0.0)
                self._accumulate((k,), v.sum(0)[None], v.pow(2).sum(0)[None])

    def declare(
        self, keys: tuple[str, ...], device: torch.device | str, shape: tuple[int, ...] = ()
    ) -> MeanAccumulator:
        """Start a group at zero, as ``add`` would make it, so that every rank of a
        distributed reduction holds the same tensors, even a rank that adds nothing."""
        if len(keys) > 1 and shape:
            raise ValueError("vector-valued keys are declared one at a time")
        self._flush()
        zeros = torch.zeros((len(keys), *shape), dtype=torch.float64, device=device)
        self._accumulate(keys, zeros, zeros.clone())
        if self._count is None:
            self._count = torch.zeros((), dtype=torch.float64, device=device)
        return self

    def declare_like(
        self, values: dict[str, Tensor], device: torch.device | str
    ) -> MeanAccumulator:
        """Declare at zero the groups that ``add(**values)`` would make (per-example values of
        one batch, used only for their names and shapes)."""
        scalars = tuple(k for k, v in values.items() if v.dim() == 1)
        if scalars:
            self.declare(scalars, device)
        for k, v in values.items():
            if v.dim() > 1:
                self.declare((k,), device, tuple(v.shape[1:]))
        return self

    def _accumulate(self, keys: tuple[str, ...], s: Tensor, sq: Tensor) -> None:
        group = self._groups.get(keys)
        if group is None:
            clash = set(keys) & set(self.sums)
            if clash:
                raise ValueError(f"keys {sorted(clash)} were accumulated with other keys before")
            self._groups[keys] = [s, sq]
        else:
            group[0] += s
            group[1] += sq

    @property
    def sums(self) -> dict[str, Tensor]:
        self._flush()
        return {k: g[0][i] for keys, g in self._groups.items() for i, k in enumerate(keys)}

    @property
    def sq_sums(self) -> dict[str, Tensor]:
        self._flush()
        return {k: g[1][i] for keys, g in self._groups.items() for i, k in enumerate(keys)}

    def tensors(self) -> list[Tensor]:
        """The accumulator's state tensors (for an in-place all-reduce), count last."""
        self._flush()
        out = [t for g in self._groups.values() for t in g]
        return out + ([self._count.view(1)] if self._count is not None else [])

    def mean(self, key: str) -> Tensor:
        return self.sums[key] / self.n

    def result(self) -> dict[str, float | list[float]]:
        """``{key: mean, key_se: standard error of the mean over examples}``."""
        out: dict[str, float | list[float]] = {}
        n = self.n
        if n == 0:
            return out
        sq_sums = self.sq_sums
        for k, total in self.sums.items():
            mean = total / n
            var = (sq_sums[k] / n - mean.pow(2)).clamp_min(0) * n / max(n - 1, 1)
            se = (var / n).sqrt()
            out[k] = mean.item() if mean.dim() == 0 else mean.tolist()
            out[f"{k}_se"] = se.item() if se.dim() == 0 else se.tolist()
        return out


def all_reduce_(acc: MeanAccumulator) -> MeanAccumulator:
    """Sum an accumulator over the ranks of an initialised process group (no-op otherwise)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return acc
    tensors = acc.tensors()
    if not tensors:
        return acc
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return acc
