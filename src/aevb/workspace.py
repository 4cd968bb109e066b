"""What the evaluator's hot loop needs of its tensors: reused buffers, work done per group.

**Buffers.** The evaluator decodes thousands of chunks of the same shape. On a CPU every
fresh tensor of a few MB is new memory from the kernel: glibc returns freed blocks above
its trim threshold to the system, so the next chunk's tensors page-fault again, which cost
as much as the decoder's matmuls (measured in docs/benchmarks.md, "Importance-sampled
evaluation"). A :class:`Workspace` keeps one buffer per name and hands out views of it.
Only for computations without autograd: a buffer is overwritten by the next call.

**Groups of samples.** A chunk is ``[S, B, ...]``: S samples of a batch of B examples, S
set by the chunk size. For a sample's numbers not to depend on S (the estimate is
bit-identical whatever the chunk size), every operation whose result can depend on where
a number sits in a tensor runs on fixed **groups** of :func:`group_size` samples, the same
groups in every chunking (the estimators make chunks of whole groups):

* matmuls: MKL picks its kernels by the matrix sizes and, for narrow outputs, by the
  input rows' memory alignment (measured: float64 results depend on the number of rows
  for most shapes; float32 with 1-11 output columns on the input rows' 16-byte alignment;
  the output's alignment does not matter). Each group is one matmul of its ``g * B`` rows,
  copied to a 64-byte boundary where they do not start on one, so each group is the same
  call whatever the chunking (:func:`linear_into`, :func:`linear_per_group`). Float32
  groups of 256 rows or more through layers of 128 features or more in and out go to
  oneDNN's linear (:func:`onednn_linear`), the same call
  for the same group whatever the chunking too. That operator returns a fresh tensor, so
  the MLP decoder of the evaluator's hot loop runs group by group through all its layers
  (:func:`aevb.models.networks.decoder_log_likelihood`): one group's outputs are freed
  before the next group's are made, with nothing copied into a chunk-sized buffer;
* transcendental elementwise functions (:func:`groups`): ATen's vectorised loops compute a
  tensor's last elements, and those where threads split it, with the function's scalar
  form, which differs from the vector form in the last bits; calls on the same block of
  the same shape compute every element the same way.

Exact IEEE operations (``+``, ``*``, squares, sums over the last dimension) run on whole
chunks: their results do not depend on position.

**Workers.** ATen splits each operation of a group between the CPU's threads: the matmuls
scale with them, but the elementwise passes over a group's few MB, the noise drawn one
sample at a time and the per-chunk Python gain little. :class:`Workers` runs whole chunks
instead, one per thread, every operation on one thread, and hands the results back in
order (docs/benchmarks.md, "Worker threads"). Every chunk runs on one thread whatever
the chunking, so the estimate is still the same whatever the chunk size; against the
chunks computed one after another with each operation split between the threads
(``WORKERS = False``) it differs in the last bits at most.

All of this is for the CPU. On a GPU a chunk is one group (hundreds of samples in one
kernel each: per-group launches would cost more than the work), so there the estimate is
as chunk-independent as cuBLAS's kernel choice (not measured: no GPU was lent).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
S = TypeVar("S")

ALIGN_BYTES = 64  # a cache line, and what PyTorch's CPU allocator aligns to
GROUP_ROWS = 64  # a group has at least this many rows: matmuls of fewer lose speed


def group_size(batch: int) -> int:
    """Samples per group for a batch of ``batch`` examples: enough for 64 rows (one sample
    from B = 64 on, 64 samples for B = 1)."""
    return max(1, -(-GROUP_ROWS // max(batch, 1)))


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
        self._memos: dict[Hashable, object] = {}

    def memo(self, key: Hashable, make: Callable[[], T]) -> T:
        """``make()``, computed on the first call for ``key`` and kept for the workspace's
        life (e.g. weights scaled for the hot loop: valid while the parameters they come
        from do not change, as during one evaluation batch)."""
        if key not in self._memos:
            self._memos[key] = make()
        return self._memos[key]  # type: ignore[return-value]

    def empty(self, key: Hashable, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
        n = math.prod(shape)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffers[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def aligned_rows(t: Tensor) -> Tensor:
    """``t`` ``[..., F]`` as contiguous rows ``[N, F]`` starting on a 64-byte boundary (a copy
    where ``t``'s are not)."""
    rows = t.reshape(-1, t.shape[-1])
    if rows.is_contiguous() and rows.data_ptr() % ALIGN_BYTES == 0:
        return rows
    return rows.clone(memory_format=torch.contiguous_format)


def _group(t: Tensor) -> int:
    """Samples per group of ``t`` ``[S, B, ...]``: :func:`group_size` on a CPU, all S elsewhere."""
    return group_size(t.shape[1]) if t.device.type == "cpu" else max(t.shape[0], 1)


def linear_per_group(
    h: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor | None = None
) -> Tensor:
    """``h @ weight.T + bias`` for ``[S, B, F]``, one matmul per group of samples: ``[S, B, O]``.

    Each group is one matmul (the bias added by it, as ``F.linear`` does) of its 64-byte-
    aligned rows, so that a sample's numbers do not depend on S (see the module docstring),
    written into ``out`` (default: a fresh contiguous tensor). A chunk of one group that
    oneDNN computes (:func:`onednn_linear`) is its fresh result, ``out`` unused.
    """
    s, b, _ = h.shape
    o = weight.shape[0]
    g = _group(h)
    if s <= g and _onednn_applies(h, weight, bias):
        return onednn_linear(aligned_rows(h), weight, bias).view(s, b, o)
    if out is None:
        out = h.new_empty((s, b, o))
    for i in range(0, s, g):
        _matmul_into(out[i : i + g].view(-1, o), aligned_rows(h[i : i + g]), weight, bias)
    return out


def _matmul_into(dest: Tensor, rows: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """``dest`` ``[N, O]`` = ``rows`` ``[N, F]`` @ ``weight.T`` (+ ``bias``, added by the matmul
    as ``F.linear`` adds it: one ``addmm``; or oneDNN's, copied, where it applies)."""
    if _onednn_applies(rows, weight, bias):
        dest.copy_(onednn_linear(rows, weight, bias))
    elif bias is None:
        torch.mm(rows, weight.t(), out=dest)
    else:
        torch.addmm(bias, rows, weight.t(), out=dest)


# oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the operator torch.compile's
# CPU code calls) serves every matmul of this module that it applies to: the evaluator's
# hot loop, and aevb's Linear on samples without autograd (decoding, generating). On this
# project's AVX-512 CPU it runs float32 matmuls of 500-2000 rows 5-20% faster than
# torch.mm (MKL) where both of the weight's sides have 200 or more features, and adds the
# bias without a pass over the output; at 64 rows, or with 20-100 features on a side, it
# is slower (docs/benchmarks.md, "Importance-sampled evaluation"). So it takes the
# matmuls of at least ONEDNN_MIN_ROWS rows and ONEDNN_MIN_FEATURES features in and out.
# A group's rows are fixed by the batch size and a layer's features by the model, so each
# group's numbers still do not depend on the chunk. A private operator: used only where it
# exists and gives F.linear's numbers to float32 rounding (checked once a process),
# torch.mm otherwise. Set ONEDNN False for torch.mm only
# (``benchmarks/eval_speed.py --matmul mkl``).
ONEDNN = True
ONEDNN_MIN_ROWS = 256
ONEDNN_MIN_FEATURES = 128


def _onednn_applies(rows: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`onednn_linear` computes ``rows @ weight.T + bias`` (``[..., F]``, or a
    group of ``[S, B, F]``): float32 on a CPU, without autograd (the operator has no
    backward), at least ONEDNN_MIN_ROWS rows a matmul and ONEDNN_MIN_FEATURES on each side
    of the weight, where the operator passed its check."""
    grad = torch.is_grad_enabled() and (
        rows.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    return (
        ONEDNN
        and _rows(rows) >= ONEDNN_MIN_ROWS
        and min(weight.shape) >= ONEDNN_MIN_FEATURES
        and rows.dtype == torch.float32
        and weight.dtype == torch.float32
        and rows.device.type == "cpu"
        and weight.is_contiguous()
        and not grad
        and torch.backends.mkldnn.enabled  # a user's torch.backends.mkldnn.flags(enabled=False)
        and _onednn_works()
    )


def _rows(t: Tensor) -> int:
    """The rows of one matmul over ``t``: a group's of ``[S, B, F]``, else all of ``[..., F]``."""
    if t.dim() == 3:
        return min(_group(t), t.shape[0]) * t.shape[1]
    return t.numel() // max(t.shape[-1], 1)


def onednn_linear(rows: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``rows @ weight.T + bias`` by oneDNN: ``[N, F]`` -> a fresh ``[N, O]`` (float32, CPU)."""
    return torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")


@functools.cache
def _onednn_works() -> bool:
    """oneDNN's linear exists here and matches F.linear on a small problem (once a process)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        rows = torch.randn(70, 33, generator=gen)
        weight, bias = torch.randn(17, 33, generator=gen), torch.randn(17, generator=gen)
        with torch.no_grad():
            got = onednn_linear(rows, weight, bias)
        want = torch.nn.functional.linear(rows.double(), weight.double(), bias.double())
        return got.shape == want.shape and bool((got.double() - want).abs().max() < 1e-4)
    except Exception:  # an operator missing or refusing in this build: torch.mm then
        return False


def linear_into(
    workspace: Workspace, key: Hashable, h: Tensor, weight: Tensor, bias: Tensor | None
) -> Tensor:
    """``h @ weight.T + bias`` written into ``workspace``'s buffer ``key``: ``[..., F]`` -> ``[..., O]``.

    ``[S, B, F]`` samples go through :func:`linear_per_group`; other shapes are one ``addmm``,
    or, where oneDNN applies (:func:`_onednn_applies`), its fresh result (the buffer unused).
    Without autograd only.
    """
    o = weight.shape[0]
    if h.dim() != 3 and _onednn_applies(h, weight, bias):
        return onednn_linear(aligned_rows(h), weight, bias).view(*h.shape[:-1], o)
    out = workspace.empty(key, (*h.shape[:-1], o), like=h)
    if h.dim() == 3:
        return linear_per_group(h, weight, bias, out=out)
    _matmul_into(out.view(-1, o), h.reshape(-1, h.shape[-1]), weight, bias)
    return out


def groups(t: Tensor) -> list[Tensor]:
    """``t`` ``[S, B, ...]`` as its groups of :func:`group_size` samples, ``[g, B, ...]`` blocks
    (``[t]`` itself when it is not 3-D). Elementwise work done group by group computes
    each number the same way whatever S: calls on the same block of the same shape
    vectorise and split between threads the same way."""
    if t.dim() != 3:
        return [t]
    g = _group(t)
    return [t[i : i + g] for i in range(0, t.shape[0], g)]


def each_group_(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` (elementwise, in place) on each of :func:`groups` of ``t``; returns ``t``."""
    for part in groups(t):
        fn(part)
    return t


def per_group(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` on each of :func:`groups` of ``t`` ``[S, B, ...]`` (on aligned rows: a copy where a
    group's are not), results concatenated along the samples: the same numbers as
    ``fn(t)`` up to the last bits, and the same whatever S, for any ``fn`` that treats
    samples independently (its matmuls and transcendentals included). ``fn(t)`` when
    ``t`` is not 3-D."""
    if t.dim() != 3:
        return fn(t)
    return torch.cat([fn(aligned_rows(part).view(part.shape)) for part in groups(t)])


# Set WORKERS False for the chunks one after another, each operation on all threads.
WORKERS = True


def _plain_thread_state() -> bool:
    """Nothing thread-local that worker threads would not share: no autocast, no torch
    function or dispatch mode (``torch.device`` as a context, a FLOP counter), no profiler,
    no functorch transform. False where this PyTorch lacks one of the private functions
    asked (then no workers: the safe side)."""
    try:
        return (
            not torch.is_autocast_enabled("cpu")
            and torch._C._len_torch_function_stack() == 0
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch.autograd._profiler_enabled()
            and torch._C._functorch.maybe_current_level() is None
        )
    except AttributeError:
        return False


class Workers:
    """The evaluator's loop over chunks on worker threads of one PyTorch thread each.

    ``with Workers(device) as w: ...; for r in w.map(fn, items): ...`` gives ``fn(item)``
    in the order of ``items``. On a CPU where PyTorch has T > 1 threads, the block runs
    on one PyTorch thread (the caller is set to one on entry and back to T on exit), and
    :meth:`map` computes the items on ``min(T, len(items))`` worker threads, each set to
    one thread too. Every operation of the block then runs on one thread, however many
    items there are (a single one in the calling thread), so its numbers are those of a
    one-thread run whatever the chunking: which elements ATen computes in scalar form,
    and which kernels MKL and oneDNN pick, depend on the number of threads. The price:
    the per-example work before the loop (the encoder) runs on one thread, and fewer
    items than threads leave cores idle (K * B within a few chunks on a many-core CPU).
    A computation that is one chunk whatever the chunk size (a point-mass posterior)
    passes ``enabled=False`` and keeps every thread.

    PyTorch's thread count is process-wide state: a thread of the caller's program that
    first uses PyTorch while the block runs starts on one thread and keeps it. (On a
    PyTorch built with its native thread pool instead of OpenMP, which accepts one
    change of the count per process, the block keeps the caller's threads when the
    change is refused.)

    A few items run ahead of the one handed back (two per worker), so memory stays at a
    few chunks per worker; an exception, in an item or in the loop's body, cancels the
    items not started. Each worker starts in the caller's grad and inference mode. Where
    workers do not apply (a GPU, one thread, :data:`WORKERS` False, or thread-local state
    the workers would not see: autocast, a torch function or dispatch mode, the profiler,
    a functorch transform) the block keeps the caller's threads and the items run one
    after another in the calling thread, as before.

    State that one computation may not share with another running at the same time (a
    :class:`Workspace`'s buffers) comes from :meth:`local`: one per worker. Everything
    else ``fn`` reaches (the model, q, p) is read by several threads at once.
    """

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self._threads = torch.get_num_threads()
        self.single = (  # every operation on one thread, the items on worker threads
            enabled
            and WORKERS
            and device.type == "cpu"
            and self._threads > 1
            and _plain_thread_state()
        )
        self._local = threading.local()
        self._pools: list[ThreadPoolExecutor] = []
        self._entered = False

    def workers_for(self, items: int) -> int:
        """Worker threads that :meth:`map` runs ``items`` items on (1: the calling thread)."""
        return min(self._threads, items) if self.single else 1

    def __enter__(self) -> Workers:
        self._entered = True
        if self.single:
            torch.set_num_threads(1)
            if torch.get_num_threads() != 1:  # a build whose pool ignores it once started
                torch.set_num_threads(self._threads)
                self.single = False
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            for pool in self._pools:
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._pools.clear()
            self._entered = False
            if self.single:
                torch.set_num_threads(self._threads)

    def local(self, make: Callable[[], S]) -> S:
        """``make()``, once per thread that computes this block's items (the calling thread
        when there are no workers): one kind of state per block."""
        if not hasattr(self._local, "value"):
            self._local.value = make()
        return self._local.value

    def map(self, fn: Callable[[T], S], items: Sequence[T]) -> Iterator[S]:
        """``fn(item)`` for each item, in order (computed ahead by the workers, if any),
        inside the ``with`` block only."""
        if not self._entered:
            raise RuntimeError("Workers.map runs inside its `with` block")
        workers = self.workers_for(len(items))
        if workers <= 1:
            yield from map(fn, items)
            return
        pool = ThreadPoolExecutor(
            workers,
            thread_name_prefix="aevb-chunk",
            initializer=torch.set_num_threads,  # before any of its operations
            initargs=(1,),
        )
        self._pools.append(pool)
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def run(item: T) -> S:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(item)

        pending: deque[Future[S]] = deque()
        todo = iter(items)
        try:
            for item in todo:
                pending.append(pool.submit(run, item))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                result = pending.popleft().result()
                for item in todo:
                    pending.append(pool.submit(run, item))
                    break
                yield result
        finally:
            for future in pending:
                future.cancel()
