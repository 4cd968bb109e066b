"""Native kernels: C compiled on first use, cached per user, called through ctypes.

Some of the evaluator's elementwise work is several PyTorch passes over a tensor that
one loop in C does in one, and its per-(seed, k) normal noise is PyTorch's generator
drawing one number at a time where C draws the same numbers 16 at a time (``kernels.c``
beside this file, documented there). The first
call in a process compiles that file with the system's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``; a fraction of a second) into ``$AEVB_NATIVE_DIR``, else
``$XDG_CACHE_HOME/aevb/native`` or ``~/.cache/aevb/native`` (a folder of this user's only,
mode 0700), under a name that hashes the source, the compiler, the flags and the CPU, so
later processes load it at once. It is written atomically (a temporary file, flushed, then
a rename) and its SHA-256 beside it, last: processes compiling at the same time leave one
good file, and a file cut short by a crash is built again, not loaded. A compiler that
fails leaves its last line in ``kernels-*.failed``, so later processes do not try again
for a day (delete it to try at once); one that runs past two minutes, or is interrupted,
is killed with what it started. The library is checked once per process against PyTorch
on fixed inputs before it is used.

Where any of this fails (no compiler, a folder that is not this user's, a check that does
not pass), or ``AEVB_NATIVE=0`` is set or :data:`ENABLED` is False, :func:`library` is None
and aevb uses its PyTorch path: the same quantity to float32 rounding (tested), those
passes 2-3x slower (an evaluation ~10%). :func:`status` says which, and why.

Nothing here is PyTorch's extension machinery: no PyTorch headers, no C++ compiler, no
Python headers; the library takes raw pointers, so the wrappers check every tensor's
dtype, device, shape and layout before they call it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..files import atomic_write_bytes

log = logging.getLogger(__name__)

# Set False (or the environment variable AEVB_NATIVE=0) for PyTorch's operators only.
ENABLED = os.environ.get("AEVB_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")

FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-Wno-psabi")
SOURCE = "kernels.c"
COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the CDLL or None, "why": a line
_calls = [0]  # kernel calls by aevb (the self-check's not counted)


def _write_private(path: Path, data: bytes) -> None:
    """Atomically and flushed, mode 0600 whatever the umask (:func:`_ours` refuses files
    others may write, so a umask of 002 must not make one)."""
    atomic_write_bytes(path, data, mode=0o600)


def cache_dir() -> Path:
    """Where compiled libraries are kept (see the module docstring)."""
    if os.environ.get("AEVB_NATIVE_DIR"):  # absolute: dlopen searches its own path for a bare name
        return Path(os.environ["AEVB_NATIVE_DIR"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser().absolute() / "aevb" / "native"


def compiler() -> list[str] | None:
    """The C compiler's command (``$CC`` split as a shell would, else the first of ``cc``,
    ``gcc``, ``clang`` on the PATH), or None."""
    if os.environ.get("CC"):
        argv = shlex.split(os.environ["CC"])
        return argv if argv and shutil.which(argv[0]) else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built or loaded on the first call of the process; None where
    they are not available (:func:`status` says why) or are switched off."""
    if not ENABLED:
        return None
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                try:
                    lib, why = _load()
                except Exception as e:  # anything at all: aevb then runs without them
                    lib, why = None, f"not used: {type(e).__name__}: {e}"
                if lib is None:
                    log.info("aevb native kernels %s", why)
                _state.update(lib=lib, why=why)
    return _state["lib"]  # type: ignore[return-value]


def status(load: bool = True) -> str:
    """One line: whether the kernels are in use, and where from or why not (loads them,
    unless ``load`` is False: then "not loaded" where nothing has asked for them yet)."""
    if not ENABLED:
        return "off (AEVB_NATIVE=0 or aevb.native.ENABLED = False)"
    if load:
        library()
    return str(_state.get("why", "not loaded: nothing has asked for them in this process"))


def calls() -> int:
    """How many times aevb has called a kernel in this process (a counter: the difference
    over a computation says whether the kernels computed any of it)."""
    return _calls[0]


def _load() -> tuple[ctypes.CDLL | None, str]:
    argv = compiler()
    if argv is None:
        return None, "not used: no C compiler found (set CC, or install gcc or clang)"
    source = resources.files(__package__).joinpath(SOURCE).read_bytes()
    tool = Path(shutil.which(argv[0]) or argv[0]).resolve()
    st = tool.stat()
    key = hashlib.sha256()
    parts = (source, *argv, str(tool), str(st.st_size), str(st.st_mtime_ns), *FLAGS, _cpu())
    for part in parts:
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    folder = cache_dir()
    path = folder / f"kernels-{key.hexdigest()[:20]}.so"
    if not _private_folder(folder):
        return None, f"not used: {folder} is not a folder of this user's only"
    failed = path.with_suffix(".failed")
    if not _verified(path):
        if _recent(failed):  # the compiler failed in an earlier process: not at every start
            why = failed.read_text(errors="replace").strip()
            return None, f"not used: {why} (tried again a day later, or delete {failed})"
        try:
            _compile(argv, source, path)
        except BuildError as e:  # the compiler ran and refused (not a timeout, not the OS)
            _write_private(failed, str(e).encode())
            raise
    lib = ctypes.CDLL(str(path))
    fn = lib.aevb_bernoulli_rows
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p]
    fn = lib.aevb_sigmoid_affine
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn.argtypes += [ctypes.c_float, ctypes.c_float, ctypes.c_float]
    fn = lib.aevb_bernoulli_grad
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    fn = lib.aevb_normal_rows
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint32]
    error = _check(lib)
    if error is not None:
        return None, f"not used: {path} failed its check ({error})"
    # The noise kernel mirrors PyTorch's generator, which a PyTorch release may change:
    # checked on its own, so that a mismatch leaves the other kernels in use.
    _state["normal"] = normal = _check_normal(lib)
    why = f"in use: {path} ({Path(argv[0]).name})"
    return lib, why if normal is None else f"{why}; not for the normal noise: {normal}"


def _cpu() -> str:
    """What the compiled code may depend on beside the compiler: the OS, the architecture
    and, on Linux, the CPU's model and instruction sets (a home folder shared by machines
    with different CPUs, and ``CC="gcc -march=native"``, get a library per CPU)."""
    cpu = f"{sys.platform} {platform.machine()}"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            wanted = {"model name", "flags", "Features", "CPU part"}
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in wanted:
                    cpu += f" {name.strip()}={value.strip()}"
                    wanted.discard(name.strip())
                if not line.strip():  # the first processor's block is enough
                    break
    except OSError:
        cpu += f" {platform.processor()}"
    return cpu


class BuildError(RuntimeError):
    """The compiler ran to its end and failed (missing headers, an unsupported flag)."""


RETRY_FAILED_BUILD_S = 24 * 3600


def _recent(marker: Path) -> bool:
    """``marker`` exists and was written less than RETRY_FAILED_BUILD_S ago."""
    try:
        return time.time() - marker.stat().st_mtime < RETRY_FAILED_BUILD_S
    except OSError:
        return False


def _private_folder(folder: Path) -> bool:
    """Make ``folder`` (mode 0700) where missing; True when it is a real folder (not a
    symbolic link) of this user's that no one else may write to (a library loaded from it
    runs as this user)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _ours(folder, stat.S_ISDIR)


def _ours(path: Path, kind: Callable[[int], bool]) -> bool:
    """``path`` itself (not followed if a link) is of ``kind``, this user's, and not
    writable by others."""
    st = path.lstat()
    owner = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return kind(st.st_mode) and owner and not st.st_mode & 0o022


def _verified(path: Path) -> bool:
    """The library at ``path`` is a regular file of this user's whose SHA-256 is the one
    recorded beside it when it was built (a file cut short, by a crash or a full disk, is
    built again rather than loaded: loading it could crash the process)."""
    digest = path.with_suffix(".sha256")
    try:
        if not (_ours(path, stat.S_ISREG) and _ours(digest, stat.S_ISREG)):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest.read_text().strip()
    except OSError:
        return False


def _compile(argv: list[str], source: bytes, path: Path) -> None:
    """Compile ``source`` to ``path``: built in a temporary folder beside it, then the
    library and its SHA-256 (the commit) written atomically and flushed to disk. A
    compiler that runs past COMPILE_TIMEOUT_S is killed with everything it started."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        src, out = Path(tmp) / SOURCE, Path(tmp) / path.name
        src.write_bytes(source)
        proc = subprocess.Popen(
            [*argv, *FLAGS, "-o", str(out), str(src), "-lm"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed whole on a timeout
        )
        try:
            output, _ = proc.communicate(timeout=COMPILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{argv[0]} took more than {COMPILE_TIMEOUT_S} s") from None
        finally:  # a timeout, Ctrl-C (which no longer reaches its group), anything
            if proc.poll() is None:
                if hasattr(os, "killpg"):
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                proc.wait()
        if proc.returncode != 0 or not out.exists():
            lines = output.decode(errors="replace").strip().splitlines()
            why = lines[-1] if lines else f"exit status {proc.returncode}"
            raise BuildError(f"{argv[0]} failed: {why}")
        data = out.read_bytes()
    path.with_suffix(".sha256").unlink(missing_ok=True)  # no digest: not loaded meanwhile
    _write_private(path, data)
    _write_private(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest().encode())
    path.with_suffix(".failed").unlink(missing_ok=True)
    if hasattr(os, "O_DIRECTORY"):  # the renames themselves, on disk
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check(lib: ctypes.CDLL) -> str | None:
    """The kernels against PyTorch in float64 on fixed inputs: None when they agree.
    (Float32 CPU tensors explicitly: a process may have changed PyTorch's defaults.)"""
    f32 = dict(dtype=torch.float32, device="cpu")
    g = torch.Generator().manual_seed(0)
    rows, batch, d = 6, 3, 37  # a row length that is not a multiple of 16
    logits = torch.randn(rows, d, generator=g, **f32) * 8
    x = torch.rand(batch, d, generator=g, **f32) < 0.4
    logits[-1, 0] = -200.0 if bool(x[(rows - 1) % batch, 0]) else 200.0  # 200 nats, one pixel
    out = torch.empty(rows, **f32)
    skipped = bernoulli_rows(logits, sign_bits(x), out, lib=lib)
    sign = (2 * x.double() - 1).repeat(rows // batch, 1)
    want = F.logsigmoid(sign * logits.double()).sum(-1)
    if skipped != 1 or not bool(out[-1].isnan()):
        return f"{skipped} rows skipped where 1 should be"
    err = float((out[:-1].double() - want[:-1]).abs().max())
    if err > 1e-4:
        return f"off by {err:.3g} nats"
    xs = torch.rand(rows - 1, d, generator=g, **f32)  # grey levels: the cross-entropy
    got, grad = torch.empty(rows - 1, **f32), torch.empty(rows - 1, d, **f32)
    bernoulli_grad(logits[:-1], xs, got, grad, lib=lib)
    ls, xd = logits[:-1].double(), xs.double()
    want = -F.binary_cross_entropy_with_logits(ls, xd, reduction="none").sum(-1)
    err = float((got.double() - want).abs().max())
    err_grad = float((grad.double() - (xd - ls.sigmoid())).abs().max())
    if err > 1e-4 or err_grad > 1e-6:
        return f"cross-entropy off by {err:.3g} nats, its gradient by {err_grad:.3g}"
    t = torch.linspace(-120, 120, 97, **f32)  # not a multiple of 16
    want = t.double().div(2).tanh()
    sigmoid_affine_(t, 2.0, -1.0, lib=lib)
    err = float((t.double() - want).abs().max())
    if err > 1e-6:
        return f"tanh off by {err:.3g}"
    t = torch.linspace(-60, 60, 97, **f32)
    y = torch.empty_like(t)
    tanh(t, y, lib=lib)
    err = float((y.double() - t.double().tanh()).abs().max())
    return None if err <= 1e-6 else f"tanh (training's) off by {err:.3g}"


def _check_normal(lib: ctypes.CDLL) -> str | None:
    """:func:`normal_rows` against PyTorch's CPU generator: None when every number agrees
    to 2e-5 (the same uniforms; only the last bits of log, sin and cos may differ).

    Rows of 37 numbers (a block of 16 drawn again at the end) and of 640 (past the
    Twister's 624 words of state), from a seed above 2^32 whose low 32 bits wrap from one
    row to the next (PyTorch seeds with the low 32 bits)."""
    seed = (1 << 40) + (1 << 32) - 2
    for n in (37, 640):
        # NaN first: memory from the allocator may hold an earlier check's numbers
        got = torch.full((3, n), math.nan, dtype=torch.float32, device="cpu")
        normal_rows(got, seed, lib=lib)
        for r in range(3):
            want = torch.empty(n, dtype=torch.float32, device="cpu")
            want.normal_(generator=torch.Generator().manual_seed(seed + r))
            err = float((got[r] - want).abs().max())
            if not err <= 2e-5:
                return f"its normal noise is off PyTorch's by {err:.3g}"
    return None


def takes(t: Tensor, autograd: bool = False) -> bool:
    """Whether the kernels may compute on ``t`` in place of PyTorch's operators: a plain,
    non-empty, contiguous, strided float32 CPU tensor (no negative or conjugate view);
    without autograd unless ``autograd`` (the caller records the operation itself); with
    no forward-mode tangent, outside functorch's transforms (vmap, grad, jvp), a JIT trace,
    ``torch.compile``'s tracing and a dispatch mode (``make_fx``), which would not see the
    C; where the kernels loaded (the first call in a process may compile them)."""
    return (
        not torch.compiler.is_compiling()  # first: torch.compile would trace what follows
        and type(t) is Tensor
        and not torch.jit.is_tracing()  # under a trace, numel() is a traced value
        and t.layout == torch.strided
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.numel() > 0
        and t.is_contiguous()
        and not t.is_neg()
        and not t.is_conj()
        and (autograd or not (t.requires_grad and torch.is_grad_enabled()))
        and _outside_transforms(t)
        and library() is not None
    )


def _outside_transforms(t: Tensor) -> bool:
    try:
        if torch._C._functorch.maybe_current_level() is not None:
            return False
        if torch._C._len_torch_dispatch_stack():  # make_fx and other dispatch-mode tracers
            return False
        forward_ad = torch.autograd.forward_ad
        if forward_ad._current_level >= 0 and forward_ad.unpack_dual(t).tangent is not None:
            return False
    except AttributeError:  # a PyTorch without these private names: the safe side
        return False
    return not torch.compiler.is_compiling()


def _for_call(lib: ctypes.CDLL | None) -> ctypes.CDLL:
    """The library a wrapper calls: ``lib`` (the self-check's), else :func:`library`, the
    call counted (:func:`calls`); an error where the kernels are not available."""
    if lib is None:
        _calls[0] += 1
        lib = library()
    if lib is None:
        raise RuntimeError(f"aevb's native kernels are {status()}")
    return lib


def normal_rows_take(out: Tensor) -> bool:
    """Whether :func:`normal_rows` may fill ``out`` ``[R, n]``: as :func:`takes`, rows of 16
    numbers or more, and its check against this PyTorch's generator passed."""
    return (
        out.dim() == 2
        and out.shape[1] >= 16
        and takes(out)
        and _state.get("normal", "not checked") is None
    )


def normal_rows(out: Tensor, seed: int, lib: ctypes.CDLL | None = None) -> Tensor:
    """Each row of ``out`` ``[R, n]`` (float32, contiguous, on the CPU, n >= 16) filled with
    the standard normal noise PyTorch's CPU generator draws after ``manual_seed(seed + r)``
    (``aevb_normal_rows``): the same uniforms, and numbers within a few units in the last
    place of ``normal_``'s. PyTorch seeds its Mersenne Twister with a seed's low 32 bits,
    so ``seed`` counts modulo 2^32. Returns ``out``."""
    lib = _for_call(lib)
    if not (_plain_f32(out) and out.dim() == 2 and out.shape[1] >= 16):
        raise ValueError(f"normal_rows: out {tuple(out.shape)} {out.dtype} on {out.device}")
    rows, n = out.shape
    lib.aevb_normal_rows(out.data_ptr(), rows, n, seed % 2**32)
    return out


def _plain_f32(*tensors: Tensor) -> bool:
    """Every tensor float32, contiguous, on the CPU: what the C may read as a flat array."""
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in tensors
    )


def sign_bits(x: Tensor) -> Tensor:
    """The sign bit where binary ``x`` ``[B, D]`` is 1, else 0: ``[B, D]`` int32, as
    :func:`bernoulli_rows` takes the data."""
    return torch.where(x.bool(), torch.iinfo(torch.int32).min, 0).to(torch.int32).contiguous()


def bernoulli_rows(
    logits: Tensor, flip: Tensor, out: Tensor, lib: ctypes.CDLL | None = None
) -> int:
    """``out[r] = sum_d log sigmoid((2 x_d - 1) logits[r, d])`` with x the row ``r % B`` of the
    data, in one pass (``kernels.c``, ``aevb_bernoulli_rows``).

    Args:
        logits: ``[N, D]`` float32, contiguous, on the CPU; N a multiple of B (samples of a
            batch: row r belongs to example r % B).
        flip: ``[B, D]`` the data as :func:`sign_bits` gives it.
        out: ``[N]`` float32, contiguous, written.
        lib: the library (default :func:`library`, which must not be None).

    Returns:
        The number of rows not computed (a pixel costing more than 80 nats, or a NaN):
        those are NaN in ``out``, for the caller to compute another way.
    """
    lib = _for_call(lib)
    n, d = logits.shape
    b = flip.shape[0]
    ok = (
        _plain_f32(logits, out)
        and flip.dtype == torch.int32
        and flip.device.type == "cpu"
        and flip.is_contiguous()
        and flip.shape == (b, d)
        and out.shape == (n,)
        and b > 0
        and n % b == 0
    )
    if not ok:
        raise ValueError(
            f"bernoulli_rows: logits {tuple(logits.shape)} {logits.dtype}, flip "
            f"{tuple(flip.shape)} {flip.dtype}, out {tuple(out.shape)} {out.dtype}"
        )
    return int(lib.aevb_bernoulli_rows(logits.data_ptr(), flip.data_ptr(), n, b, d, out.data_ptr()))


def sigmoid_affine_(
    x: Tensor, scale: float, shift: float, lib: ctypes.CDLL | None = None
) -> Tensor:
    """``x = scale * sigmoid(x) + shift`` in place, one pass (``aevb_sigmoid_affine``):
    ``2 sigmoid(x) - 1 = tanh(x / 2)`` and its half, the evaluator's tanh layers. ``x``: any
    shape, float32, contiguous, on the CPU (see :func:`takes`). Returns ``x``."""
    lib = _for_call(lib)
    if not _plain_f32(x):
        raise ValueError(f"sigmoid_affine_: x {tuple(x.shape)} {x.dtype} on {x.device}")
    lib.aevb_sigmoid_affine(x.data_ptr(), x.data_ptr(), x.numel(), 1.0, scale, shift)
    increment_version = getattr(torch.autograd.graph, "increment_version", None)
    if increment_version is not None:  # written behind autograd's back: say so
        increment_version(x)
    return x


def tanh(x: Tensor, out: Tensor, lib: ctypes.CDLL | None = None) -> Tensor:
    """``out = tanh(x)`` as ``2 / (1 + e^(-2x)) - 1``, one pass (``aevb_sigmoid_affine``; within 2e-7
    of tanh): ``x`` and ``out`` of one shape, float32, contiguous, on the CPU; ``out`` may
    be ``x``. Returns ``out``."""
    lib = _for_call(lib)
    if not (_plain_f32(x, out) and x.shape == out.shape):
        raise ValueError(f"tanh: x {tuple(x.shape)} {x.dtype}, out {tuple(out.shape)} {out.dtype}")
    lib.aevb_sigmoid_affine(x.data_ptr(), out.data_ptr(), x.numel(), 2.0, 2.0, -1.0)
    return out


def bernoulli_grad(
    logits: Tensor,
    x: Tensor,
    out: Tensor,
    grad: Tensor | None = None,
    lib: ctypes.CDLL | None = None,
) -> None:
    """``out[r] = sum_d x_d l_d - softplus(l_d)`` (the Bernoulli log-likelihood of binary x,
    the cross-entropy of x in [0, 1]) and ``grad[r, d] = x_d - sigmoid(l_d)``, its gradient
    in the logits, in one pass (``aevb_bernoulli_grad``); x is the row ``r % B`` of ``x``.

    Args:
        logits: ``[N, D]`` float32, contiguous, on the CPU; N a multiple of B.
        x: ``[B, D]`` float32, contiguous.
        out: ``[N]`` float32, contiguous, written.
        grad: ``[N, D]`` float32, contiguous, written; None for the sums only.
        lib: the library (default :func:`library`, which must not be None).
    """
    lib = _for_call(lib)
    n, d = logits.shape
    b = x.shape[0]
    tensors = [logits, x, out] + ([grad] if grad is not None else [])
    ok = (
        _plain_f32(*tensors)
        and x.shape == (b, d)
        and out.shape == (n,)
        and (grad is None or grad.shape == (n, d))
        and b > 0
        and n % b == 0
    )
    if not ok:
        shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in tensors)
        raise ValueError(f"bernoulli_grad: {shapes}")
    g = grad.data_ptr() if grad is not None else None
    lib.aevb_bernoulli_grad(logits.data_ptr(), x.data_ptr(), n, b, d, out.data_ptr(), g)
