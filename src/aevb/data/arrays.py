"""User data as NumPy arrays: ``.npy`` (one array) or ``.npz`` (named arrays), never unpickled.

Accepted layouts (N examples):
  * ``N x D`` vectors -> shape ``(D,)``;
  * ``N x H x W`` grayscale images -> ``(1, H, W)``;
  * ``N x H x W x C`` images, channels last, C in {1, 3, 4} -> ``(C, H, W)``.
Boolean arrays are kept as {0, 1}; integer arrays with values in 0..255 (8-bit images) are
scaled by 1/255, other integers are kept as numbers; floats are kept as they are (values
beyond float32's range are an error, not an overflow). Labels must be integers, one per
example.
An ``.npz`` holds either ``x`` (or a single array), with optional labels ``y``, split
reproducibly; or ``train``/``valid``/``test`` arrays (and optional ``train_labels`` ...).
The suggested likelihood is bernoulli when all values lie in [0, 1], gaussian otherwise.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .base import SPLITS, Dataset, DatasetInfo, check_finite, random_splits

MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _read(path: Path) -> dict[str, np.ndarray]:
    # NumPy takes any file without the .npy magic for a pickle; say what it really is.
    with open(path, "rb") as f:
        head = f.read(6)
    magic = MAGIC[path.suffix.lower()]
    if not head.startswith(magic):
        raise DataError(
            f"{path} is not a NumPy {path.suffix} file (it does not start with {magic!r})"
        )
    try:
        if path.suffix.lower() == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for k, v in arrays.items():
            if not isinstance(v, np.ndarray):  # NumPy hands back the raw bytes of such members
                raise DataError(f"{path}: member {k!r} is not a NumPy array (.npy); re-save it")
        return arrays
    except DataError:
        raise
    except MemoryError as e:  # a header declaring more than memory holds
        raise DataError(
            f"cannot read {path}: {e}; the file is corrupt, or too large for memory"
        ) from None
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(
                f"{path} holds Python objects; aevb never unpickles data: save a numeric array"
            ) from None
        raise DataError(f"cannot read {path}: {e}") from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    except RuntimeError as e:  # zipfile: an encrypted member
        raise DataError(f"cannot read {path}: {e}; save it without a password") from None


FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_examples(a: np.ndarray, name: str) -> tuple[torch.Tensor, dict]:
    """An ``N x ...`` numeric array as float32 ``[N, *shape]`` plus the transform applied."""
    if a.dtype.kind not in "biuf":
        raise DataError(f"{name} has dtype {a.dtype}; aevb needs a numeric array")
    if a.ndim < 2 or a.ndim > 4:
        raise DataError(f"{name} has shape {a.shape}; expected N x D, N x H x W or N x H x W x C")
    if len(a) == 0:
        raise DataError(f"{name} is empty")
    if 0 in a.shape[1:]:
        raise DataError(f"{name} has shape {a.shape}: its examples have no values")
    transform: dict = {}
    if a.dtype.kind == "b":
        x = torch.from_numpy(a.astype(np.float32))  # {False, True} -> {0, 1}
    elif a.dtype.kind in "iu":
        if a.min() >= 0 and a.max() <= 255:  # 8-bit images
            transform["scale"] = 1 / 255
            x = torch.from_numpy(a.astype(np.float32) / 255.0)
        else:
            x = torch.from_numpy(a.astype(np.float32))
    else:
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(a)
            big = np.abs(np.where(finite, a, 0)).max() if finite.any() else 0.0
        if big > FLOAT32_MAX:
            raise DataError(
                f"{name} holds values up to {big:.3g}, beyond float32's range ({FLOAT32_MAX:.3g}); "
                "rescale the data"
            )
        x = torch.from_numpy(a.astype(np.float32))
    if a.ndim == 3:
        x = x.unsqueeze(1)
    elif a.ndim == 4:
        if a.shape[-1] not in (1, 3, 4):
            raise DataError(
                f"{name} has shape {a.shape}; 4-D arrays must be N x H x W x C with C in 1, 3, 4"
            )
        x = x.permute(0, 3, 1, 2).contiguous()
        transform["channels_last"] = True
    check_finite(x, name)
    return x, transform


def to_labels(a: np.ndarray, n: int, name: str) -> torch.Tensor:
    """Integer class labels ``[n]`` (int64), or a DataError saying what is wrong with them."""
    a = np.asarray(a)
    if a.ndim != 1:
        raise DataError(f"{name} has shape {a.shape}; labels are one integer per example")
    if len(a) != n:
        raise DataError(f"{name}: {len(a)} labels for {n} examples")
    if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
        a = a.astype(np.int64)
    if a.dtype.kind not in "iub":
        raise DataError(
            f"{name} has dtype {a.dtype}; labels must be integers (map class names to 0, 1, ...)"
        )
    if len(a) and a.min() < 0:
        raise DataError(f"{name} has negative labels; use 0, 1, ...")
    return torch.from_numpy(a.astype(np.int64))


def load_array_file(path: Path, config: DataConfig) -> Dataset:
    arrays = _read(path)
    if all(s in arrays for s in SPLITS):
        parts = {s: to_examples(arrays[s], f"{path.name}[{s}]") for s in SPLITS}
        splits = {s: p[0] for s, p in parts.items()}
        transform = parts["train"][1]
        labels = {
            s: to_labels(arrays[f"{s}_labels"], len(splits[s]), f"{path.name}[{s}_labels]")
            for s in SPLITS
            if f"{s}_labels" in arrays
        } or None
        if labels is not None and len(labels) != len(SPLITS):
            missing = [f"{s}_labels" for s in SPLITS if s not in labels]
            raise DataError(
                f"{path} has labels for some splits but not {missing}; give all or none"
            )
        shapes = {tuple(x.shape[1:]) for x in splits.values()}
        if len(shapes) > 1:
            raise DataError(f"{path}: the splits have different example shapes {sorted(shapes)}")
    else:
        key = "x" if "x" in arrays else None
        if key is None:
            data_keys = [k for k in arrays if k not in ("y", "labels")]
            if len(data_keys) != 1:
                raise DataError(
                    f"{path} holds arrays {sorted(arrays)}; name the data 'x' (labels 'y') "
                    "or give 'train', 'valid' and 'test'"
                )
            key = data_keys[0]
        x, transform = to_examples(arrays[key], path.name)
        y_arr = arrays.get("y", arrays.get("labels"))
        y = None if y_arr is None else to_labels(y_arr, len(x), f"{path.name} labels")
        splits, labels = random_splits(
            x, y, config.valid_fraction, config.test_fraction, config.split_seed
        )
    lo = min(float(x.min()) for x in splits.values())
    hi = max(float(x.max()) for x in splits.values())
    likelihood = "bernoulli" if lo >= 0.0 and hi <= 1.0 else "gaussian"
    shape = tuple(splits["train"].shape[1:])
    info = DatasetInfo(
        str(path),
        shape,
        (lo, hi),
        labels is not None,
        likelihood,
        f"user array {path.name}",
        transform,
    )
    return Dataset(info, splits, labels)
