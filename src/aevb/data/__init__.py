"""Where data enters aevb: named datasets (a registry) and user files, one contract.

``load_dataset(DataConfig(...))`` returns a :class:`~aevb.data.base.DataSource` (in
memory: :class:`~aevb.data.base.Dataset`; from disk:
:class:`~aevb.data.streaming.StreamingDataset`); see ``base.py`` for the contract every
source meets. One module per source format:

* named: ``builtin`` (digits, ring, moons, gaussians), ``binarized_mnist``, ``idx``
  (mnist, fashion-mnist, kmnist), ``frey_face``, ``cifar10`` -- files fetched and
  checksummed by ``download``;
* user paths: ``images`` (a folder), ``arrays`` (.npy/.npz), ``tables`` (.csv); folders
  over ``--memory-budget-mb`` are served from disk by ``streaming``;
* Python objects: ``tensors`` (:func:`from_tensor`, :func:`from_torch_dataset`).

``--binarize`` and ``--dequantize`` are applied here, after loading, to whatever source,
through the contract's one per-batch transform hook (``transforms``, ``binarize``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from . import binarized_mnist, builtin, cifar10, frey_face, idx  # noqa: F401  (register datasets)
from .arrays import load_array_file
from .base import SPLITS, Dataset, DatasetInfo, DataSource, epoch_permutation, shard_range
from .binarize import Binarize, binarize_dataset
from .download import data_root
from .images import load_image_folder
from .registry import DATASETS, SPLIT_OPTIONS, register_dataset
from .streaming import StreamingDataset
from .tables import load_csv
from .tensors import from_tensor, from_torch_dataset
from .transforms import BatchTransform, Dequantize

# User data, by what the path is: each kind registers its reader here. A directory is
# read by FOLDER_LOADER; files by their suffix.
FILE_LOADERS: dict[str, Callable[[Path, DataConfig], DataSource]] = {
    ".npy": load_array_file,
    ".npz": load_array_file,
    ".csv": load_csv,
}
FOLDER_LOADER: Callable[[Path, DataConfig], DataSource] = load_image_folder


# config.json names this source for data handed to ``aevb.train(..., dataset=...)``.
PYTHON_SOURCE = "python:"


def load_dataset(config: DataConfig) -> DataSource:
    """Load the dataset named (or pointed to) by ``config.dataset``, then apply
    ``--binarize`` or ``--dequantize``.

    Raises:
        DataError: unknown name, unreadable file, or data that breaks the contract.
    """
    check_data_config(config)
    ds = binarize_dataset(_load(config), config.binarize, config.split_seed)
    if config.dequantize == "uniform":
        ds = ds.with_transform(Dequantize())
    return ds


# Settings that only some sources use; `aevb train` refuses them elsewhere (they would be
# silently ignored). dataset and binarize apply to every source.
SOURCE_SPECIFIC = (
    "data_dir",
    "split_seed",
    "valid_fraction",
    "test_fraction",
    "synthetic_size",
    "image_size",
    "columns",
    "memory_budget_mb",
    "num_workers",
    "label_column",
)
FILE_OPTIONS = {
    ".npy": SPLIT_OPTIONS,
    ".npz": SPLIT_OPTIONS,
    ".csv": ("columns", "label_column", *SPLIT_OPTIONS),
}
FOLDER_OPTIONS = ("image_size", "memory_budget_mb", "num_workers", *SPLIT_OPTIONS)


def check_options_apply(config: DataConfig) -> None:
    """Refuse data settings the chosen source would ignore (``--columns`` with a .npy, ...).

    Raises:
        DataError: naming the setting, the source, and what to do.
    """
    name = config.dataset
    if name in DATASETS:
        options, what = DATASETS[name].options, name
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            options, what = FOLDER_OPTIONS, "an image folder"
        else:
            options, what = FILE_OPTIONS.get(path.suffix.lower(), ()), f"a {path.suffix} file"
    used = set(options) | ({"split_seed"} if config.binarize == "dynamic" else set())
    defaults = DataConfig()
    for field in SOURCE_SPECIFIC:
        if field not in used and getattr(config, field) != getattr(defaults, field):
            flag = "--" + field.replace("_", "-")
            raise DataError(f"{flag} does not apply to {what}, which would ignore it; drop {flag}")


def check_data_config(config: DataConfig) -> None:
    """Reject data settings no source can use, before anything is read or written."""
    if config.num_workers < 0:
        raise DataError(f"--num-workers must be >= 0, got {config.num_workers}")
    if config.memory_budget_mb < 0:
        raise DataError(f"--memory-budget-mb must be >= 0, got {config.memory_budget_mb}")
    if config.synthetic_size < 3:
        raise DataError(f"--synthetic-size must be >= 3, got {config.synthetic_size}")
    if any(s < 1 for s in config.image_size) or len(config.image_size) > 2:
        raise DataError(
            f"--image-size must be one or two sizes >= 1 (H,W), got {config.image_size}"
        )


def _load(config: DataConfig) -> DataSource:
    name = config.dataset
    if name.startswith(PYTHON_SOURCE):
        raise DataError(
            f"this run was trained on data passed from Python ({name[len(PYTHON_SOURCE) :]}), which "
            "aevb cannot reload; give the data again (--dataset PATH, or dataset= in Python)"
        )
    if name in DATASETS:
        return DATASETS[name].load(config)
    path = Path(name).expanduser()
    if path.is_dir():
        return FOLDER_LOADER(path, config)
    if path.exists():
        loader = FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise DataError(
                f"cannot read {path}: give a folder of images or a file ending in "
                f"{', '.join(sorted(FILE_LOADERS))}"
            )
        if not path.is_file():  # reading a pipe or a device would wait, or never end
            raise DataError(f"{path} is not a regular file (a pipe or device); give a data file")
        return loader(path, config)
    if any(sep in name for sep in "/\\."):
        raise DataError(f"data path {name} does not exist")
    raise DataError(
        f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or give a path to your data"
    )


__all__ = [
    "PYTHON_SOURCE",
    "DATASETS",
    "BatchTransform",
    "Binarize",
    "DataSource",
    "Dequantize",
    "FILE_LOADERS",
    "FOLDER_LOADER",
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "StreamingDataset",
    "data_root",
    "epoch_permutation",
    "from_tensor",
    "from_torch_dataset",
    "load_dataset",
    "register_dataset",
    "shard_range",
]
