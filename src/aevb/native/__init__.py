"""Native kernels: C compiled on first use, cached per user, called through ctypes.

Some of the evaluator's elementwise work is several PyTorch passes over a tensor that
one loop in C does in one (``kernels.c`` beside this file, documented there). The first
call in a process compiles that file with the system's C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``; a fraction of a second) into ``$AEVB_NATIVE_DIR``, else
``$XDG_CACHE_HOME/aevb/native`` or ``~/.cache/aevb/native`` (a folder of this user's only,
mode 0700), under a name that hashes the source, the compiler and the flags, so later
processes load it at once. It is written atomically (a temporary file, then a rename):
processes compiling at the same time leave one good file. The library is checked once per
process against PyTorch on fixed inputs before it is used.

Where any of this fails (no compiler, a folder that is not this user's, a check that does
not pass), or ``AEVB_NATIVE=0`` is set or :data:`ENABLED` is False, :func:`library` is None
and aevb uses its PyTorch path: the same quantity to float32 rounding (tested), a few
times slower. :func:`status` says which, and why.

Nothing here is PyTorch's extension machinery: no PyTorch headers, no C++ compiler, no
Python headers; the library takes raw pointers, so the wrappers check every tensor's
dtype, device, shape and layout before they call it.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

# Set False (or the environment variable AEVB_NATIVE=0) for PyTorch's operators only.
ENABLED = os.environ.get("AEVB_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")

FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno", "-Wno-psabi")
SOURCE = "kernels.c"
COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the CDLL or None, "why": a line


def cache_dir() -> Path:
    """Where compiled libraries are kept (see the module docstring)."""
    if os.environ.get("AEVB_NATIVE_DIR"):
        return Path(os.environ["AEVB_NATIVE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "aevb" / "native"


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


def status() -> str:
    """One line: whether the kernels are in use, and where from or why not (loads them)."""
    if not ENABLED:
        return "off (AEVB_NATIVE=0 or aevb.native.ENABLED = False)"
    library()
    return str(_state["why"])


def _load() -> tuple[ctypes.CDLL | None, str]:
    argv = compiler()
    if argv is None:
        return None, "not used: no C compiler found (set CC, or install gcc or clang)"
    source = resources.files(__package__).joinpath(SOURCE).read_bytes()
    tool = Path(shutil.which(argv[0]) or argv[0]).resolve()
    st = tool.stat()
    key = hashlib.sha256()
    for part in (source, *argv, str(tool), str(st.st_size), str(st.st_mtime_ns), *FLAGS):
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    key.update(f"{sys.platform} {platform.machine()}".encode())
    folder = cache_dir()
    path = folder / f"kernels-{key.hexdigest()[:20]}.so"
    if not _private_folder(folder):
        return None, f"not used: {folder} is not a folder of this user's only"
    if not path.exists():
        _compile(argv, source, path)
    lib = ctypes.CDLL(str(path))
    fn = lib.aevb_bernoulli_rows
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p]
    fn = lib.aevb_sigmoid_affine
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_float]
    fn = lib.aevb_bernoulli_grad
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
    fn.argtypes += [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    error = _check(lib)
    if error is not None:
        return None, f"not used: {path} failed its check ({error})"
    return lib, f"in use: {path} ({Path(argv[0]).name})"


def _private_folder(folder: Path) -> bool:
    """Make ``folder`` (mode 0700) where missing; True when it is this user's and no one
    else may write to it (a library loaded from it runs as this user)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = folder.stat()
    owner = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    return owner and not st.st_mode & 0o022


def _compile(argv: list[str], source: bytes, path: Path) -> None:
    """Compile ``source`` to ``path`` atomically (a temporary file in its folder, renamed)."""
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        src, out = Path(tmp) / SOURCE, Path(tmp) / path.name
        src.write_bytes(source)
        done = subprocess.run(
            [*argv, *FLAGS, "-o", str(out), str(src), "-lm"],
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(f"{argv[0]} failed: {lines[-1] if lines else done.returncode}")
        os.replace(out, path)


def _check(lib: ctypes.CDLL) -> str | None:
    """The kernels against PyTorch in float64 on fixed inputs: None when they agree."""
    g = torch.Generator().manual_seed(0)
    rows, batch, d = 6, 3, 37  # a row length that is not a multiple of 16
    logits = torch.randn(rows, d, generator=g) * 8
    x = torch.rand(batch, d, generator=g) < 0.4
    logits[-1, 0] = -200.0 if bool(x[(rows - 1) % batch, 0]) else 200.0  # 200 nats, one pixel
    out = torch.empty(rows)
    skipped = bernoulli_rows(logits, sign_bits(x), out, lib=lib)
    sign = (2 * x.double() - 1).repeat(rows // batch, 1)
    want = torch.nn.functional.logsigmoid(sign * logits.double()).sum(-1)
    if skipped != 1 or not bool(out[-1].isnan()):
        return f"{skipped} rows skipped where 1 should be"
    err = float((out[:-1].double() - want[:-1]).abs().max())
    if err > 1e-4:
        return f"off by {err:.3g} nats"
    xs = torch.rand(rows - 1, d, generator=g)  # grey levels: the cross-entropy
    got, grad = torch.empty(rows - 1), torch.empty(rows - 1, d)
    bernoulli_grad(logits[:-1], xs, got, grad, lib=lib)
    ls, xd = logits[:-1].double(), xs.double()
    want = -F.binary_cross_entropy_with_logits(ls, xd, reduction="none").sum(-1)
    err = float((got.double() - want).abs().max())
    err_grad = float((grad.double() - (xd - ls.sigmoid())).abs().max())
    if err > 1e-4 or err_grad > 1e-6:
        return f"cross-entropy off by {err:.3g} nats, its gradient by {err_grad:.3g}"
    t = torch.linspace(-120, 120, 97)  # not a multiple of 16
    sigmoid_affine_(t, 2.0, -1.0, lib=lib)
    err = float((t.double() - torch.linspace(-120, 120, 97).double().div(2).tanh()).abs().max())
    return None if err <= 1e-6 else f"tanh off by {err:.3g}"


def takes(t: Tensor) -> bool:
    """Whether the kernels take ``t`` in place of PyTorch's operators: a plain contiguous
    float32 CPU tensor, without autograd, outside ``torch.compile``'s tracing, where the
    kernels loaded (the first call in a process may compile them)."""
    return (
        type(t) is Tensor
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.is_contiguous()
        and not (t.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
        and library() is not None
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
    lib = lib or library()
    if lib is None:
        raise RuntimeError(f"aevb's native kernels are {status()}")
    n, d = logits.shape
    b = flip.shape[0]
    ok = (
        logits.dtype == out.dtype == torch.float32
        and flip.dtype == torch.int32
        and logits.device.type == flip.device.type == out.device.type == "cpu"
        and logits.is_contiguous()
        and flip.is_contiguous()
        and out.is_contiguous()
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
    lib = lib or library()
    if lib is None:
        raise RuntimeError(f"aevb's native kernels are {status()}")
    if not (x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()):
        raise ValueError(f"sigmoid_affine_: x {tuple(x.shape)} {x.dtype} on {x.device}")
    lib.aevb_sigmoid_affine(x.data_ptr(), x.numel(), scale, shift)
    return x


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
    lib = lib or library()
    if lib is None:
        raise RuntimeError(f"aevb's native kernels are {status()}")
    n, d = logits.shape
    b = x.shape[0]
    tensors = [logits, x, out] + ([grad] if grad is not None else [])
    ok = (
        all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and all(t.is_contiguous() for t in tensors)
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
