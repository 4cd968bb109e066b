"""Buffers reused across the calls of a hot loop, instead of fresh tensors each call.

The evaluator decodes thousands of chunks of the same shape. On a CPU every fresh tensor
of a few MB is new memory from the kernel: glibc returns freed blocks above its trim
threshold to the system, so the next chunk's tensors page-fault again, which cost as
much as the decoder's matmuls (measured in docs/benchmarks.md, "Importance-sampled
evaluation"). A :class:`Workspace` keeps one buffer per name and hands out views of it.
Only for computations without autograd: a buffer is overwritten by the next call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch
from torch import Tensor


class Workspace:
    """One reusable buffer per key; ``empty`` returns a view of the requested shape.

    A buffer grows when a larger shape is asked for and is reused for smaller ones (the
    last, shorter chunk of a loop), so a loop allocates each buffer once.

    Example:
        >>> ws = Workspace()
        >>> a = ws.empty("logits", (4, 3), like=torch.zeros(1))
        >>> b = ws.empty("logits", (2, 3), like=torch.zeros(1))
        >>> a.data_ptr() == b.data_ptr()
        True
    """

    def __init__(self) -> None:
        self._buffers: dict[Hashable, Tensor] = {}

    def empty(self, key: Hashable, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
        n = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def linear_into(
    workspace: Workspace, key: Hashable, h: Tensor, weight: Tensor, bias: Tensor | None
) -> Tensor:
    """``h @ weight.T + bias`` written into ``workspace``'s buffer ``key``: ``[..., F]`` -> ``[..., O]``.

    The same numbers as ``F.linear`` (one ``addmm``, the bias added by the matmul).
    """
    rows = h.reshape(-1, h.shape[-1])  # [N, F]
    out = workspace.empty(key, (rows.shape[0], weight.shape[0]), like=h)  # [N, O]
    if bias is None:
        torch.mm(rows, weight.t(), out=out)
    else:
        torch.addmm(bias, rows, weight.t(), out=out)
    return out.view(*h.shape[:-1], weight.shape[0])


def slices(t: Tensor) -> list[Tensor]:
    """The ``[B, ...]`` slices of ``t`` ``[S, B, ...]`` (``[t]`` itself when it has < 3 dims).

    Elementwise work done one slice at a time has the same numbers whatever S: on a CPU,
    ATen's vectorised loops compute a tensor's last ``numel mod 2*vector-width`` elements,
    and those where threads split it, with the function's scalar form, which for sigmoid
    (a fast vectorised exp) differs from the vector form in the last bits; calls on the
    same shape split the same way. The evaluator's chunks are S samples of a batch of B
    examples, S set by the chunk size: sliced, a sample's numbers do not depend on it.
    """
    return list(t.unbind(0)) if t.dim() >= 3 else [t]


def each_slice_(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` (elementwise, in place) on each of :func:`slices` of ``t``; returns ``t``."""
    for part in slices(t):
        fn(part)
    return t
