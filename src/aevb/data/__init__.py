"""Where data enters aevb: named datasets (a registry) and user files, one contract.

``load_dataset(DataConfig(...))`` returns a :class:`~aevb.data.base.Dataset`; see
``base.py`` for the contract every source meets. One module per source format.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from . import builtin  # noqa: F401  (registers the built-in datasets)
from .arrays import load_array_file
from .base import SPLITS, Dataset, DatasetInfo, epoch_permutation, shard_range
from .registry import DATASETS, register_dataset

# User files, by suffix: each kind of user data registers its reader here.
FILE_LOADERS = {".npy": load_array_file, ".npz": load_array_file}


def load_dataset(config: DataConfig) -> Dataset:
    """Load the dataset named (or pointed to) by ``config.dataset``.

    Raises:
        DataError: unknown name, unreadable file, or data that breaks the contract.
    """
    name = config.dataset
    if name in DATASETS:
        return DATASETS[name].load(config)
    path = Path(name).expanduser()
    if path.exists():
        loader = FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise DataError(
                f"cannot read {path}: supported user files are {sorted(FILE_LOADERS)}"
            )
        return loader(path, config)
    if any(sep in name for sep in "/\\.") :
        raise DataError(f"data file {name} does not exist")
    raise DataError(
        f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or give a path to your data"
    )


__all__ = [
    "DATASETS",
    "FILE_LOADERS",
    "SPLITS",
    "Dataset",
    "DatasetInfo",
    "epoch_permutation",
    "load_dataset",
    "register_dataset",
    "shard_range",
]
