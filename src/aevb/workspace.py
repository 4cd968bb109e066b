"""What the evaluator's hot loop needs of its tensors: reused buffers, work done per sample.

**Buffers.** The evaluator decodes thousands of chunks of the same shape. On a CPU every
fresh tensor of a few MB is new memory from the kernel: glibc returns freed blocks above
its trim threshold to the system, so the next chunk's tensors page-fault again, which cost
as much as the decoder's matmuls (measured in docs/benchmarks.md, "Importance-sampled
evaluation"). A :class:`Workspace` keeps one buffer per name and hands out views of it.
Only for computations without autograd: a buffer is overwritten by the next call.

**Per sample.** A chunk is ``[S, B, ...]``: S samples of a batch of B examples, S set by
the chunk size. For a sample's numbers not to depend on S (the estimate is bit-identical
whatever the chunk size), every operation whose result can depend on where a number sits
in a tensor runs on each ``[B, ...]`` sample separately, in the same place:

* matmuls (:func:`linear_into`, :func:`linear_per_sample`): MKL picks its kernels by the
  matrix sizes and, for narrow outputs, by the rows' memory alignment (measured: float32
  with 1-11 output columns depends on the 16-byte alignment; float64 on the number of
  rows for most shapes). One call per sample, with every sample starting on a 64-byte
  boundary (:func:`samples_empty`), is the same call whatever the chunking;
* transcendental elementwise functions (:func:`slices`): ATen's vectorised loops compute
  a tensor's last elements, and those where threads split it, with the function's scalar
  form, which differs from the vector form in the last bits.

Exact IEEE operations (``+``, ``*``, squares, sums over the last dimension) run on whole
chunks: their results do not depend on position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

ALIGN_BYTES = 64  # a cache line, and what PyTorch's CPU allocator aligns to


def _sample_stride(shape: tuple[int, ...], like: Tensor) -> int:
    """Elements between samples of ``[S, *rest]``: ``prod(rest)`` rounded up to 64 bytes."""
    per = ALIGN_BYTES // like.element_size()
    return -(-math.prod(shape[1:]) // per) * per


def _as_samples(flat: Tensor, shape: tuple[int, ...], stride: int) -> Tensor:
    rest = torch.empty(shape[1:], device="meta").stride()
    return flat.as_strided(shape, (stride, *rest))


def samples_empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised ``[S, *rest]`` tensor whose S samples each start on a 64-byte boundary
    (each sample contiguous; gaps between samples)."""
    stride = _sample_stride(shape, like)
    flat = torch.empty(shape[0] * stride, dtype=like.dtype, device=like.device)
    return _as_samples(flat, shape, stride)


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

    def _flat(self, key: Hashable, n: int, like: Tensor) -> Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf

    def empty(self, key: Hashable, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
        n = math.prod(shape)
        return self._flat(key, n, like)[:n].view(shape)

    def samples(self, key: Hashable, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """:func:`samples_empty` from the buffer ``key``."""
        stride = _sample_stride(shape, like)
        return _as_samples(self._flat(key, shape[0] * stride, like), shape, stride)


def _aligned(t: Tensor) -> bool:
    return t.is_contiguous() and t.data_ptr() % ALIGN_BYTES == 0


def linear_per_sample(
    h: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None
) -> Tensor:
    """``h @ weight.T + bias`` for ``[S, B, F]``, one matmul per sample: ``[S, B, O]``.

    Each sample is one ``addmm`` (the bias added by the matmul, as ``F.linear`` does) on
    a 64-byte-aligned copy of its rows when they are not aligned, into ``out`` (default: a
    fresh :func:`samples_empty`), so that its numbers do not depend on S or on its place
    in the chunk.
    """
    s, b, _ = h.shape
    if out is None:
        out = samples_empty((s, b, weight.shape[0]), like=h)
    wt = weight.t()
    for k in range(s):
        rows = h[k] if _aligned(h[k]) else h[k].clone(memory_format=torch.contiguous_format)
        if bias is None:
            torch.mm(rows, wt, out=out[k])
        else:
            torch.addmm(bias, rows, wt, out=out[k])
    return out


def linear_into(
    workspace: Workspace, key: Hashable, h: Tensor, weight: Tensor, bias: Tensor | None
) -> Tensor:
    """``h @ weight.T + bias`` written into ``workspace``'s buffer ``key``: ``[..., F]`` -> ``[..., O]``.

    ``[S, B, F]`` samples go through :func:`linear_per_sample` (a strided ``[S, B, O]``
    view of the buffer, its samples 64-byte aligned); other shapes are one ``addmm``.
    """
    o = weight.shape[0]
    if h.dim() == 3:
        out = workspace.samples(key, (h.shape[0], h.shape[1], o), like=h)
        return linear_per_sample(h, weight, bias, out=out)
    rows = h.reshape(-1, h.shape[-1])  # [N, F]
    out = workspace.empty(key, (rows.shape[0], o), like=h)  # [N, O]
    if bias is None:
        torch.mm(rows, weight.t(), out=out)
    else:
        torch.addmm(bias, rows, weight.t(), out=out)
    return out.view(*h.shape[:-1], o)


def slices(t: Tensor) -> list[Tensor]:
    """The ``[B, ...]`` samples of ``t`` ``[S, B, ...]`` (``[t]`` itself when it has < 3 dims).

    Elementwise work done one sample at a time has the same numbers whatever S: on a CPU,
    ATen's vectorised loops compute a tensor's last ``numel mod 2*vector-width`` elements,
    and those where threads split it, with the function's scalar form, which for sigmoid
    (a fast vectorised exp) differs from the vector form in the last bits; calls on the
    same shape split the same way.
    """
    return list(t.unbind(0)) if t.dim() >= 3 else [t]


def each_slice_(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` (elementwise, in place) on each of :func:`slices` of ``t``; returns ``t``."""
    for part in slices(t):
        fn(part)
    return t


def per_sample(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` on each sample ``[B, ...]`` of ``t`` ``[S, B, ...]`` (64-byte aligned: a copy where
    the sample's rows are not), results stacked ``[S, ...]``: the same numbers as ``fn(t)``
    up to the last bits, and the same whatever S, for any ``fn`` that treats its rows
    independently (matmuls and transcendentals included). ``fn(t)`` when ``t`` has < 3 dims."""
    if t.dim() < 3:
        return fn(t)
    return torch.stack(
        [
            fn(part if _aligned(part) else part.clone(memory_format=torch.contiguous_format))
            for part in slices(t)
        ]
    )
