"""The dataset registry: ``--dataset NAME`` looks a loader up here; a path is user data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import DataConfig
from .base import DataSource

Loader = Callable[[DataConfig], DataSource]


# The data settings a source may use (others given with it are refused by `aevb train`).
SPLIT_OPTIONS = ("valid_fraction", "test_fraction", "split_seed")
OFFICIAL_TEST = ("data_dir", "valid_fraction", "split_seed")  # official test split, no valid


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    load: Loader
    options: tuple[str, ...] = SPLIT_OPTIONS


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str, description: str, options: tuple[str, ...] = SPLIT_OPTIONS
) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(config) -> DataSource`` under ``name``.

    ``options`` names the :class:`~aevb.config.DataConfig` fields the loader uses.
    """

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = DatasetSpec(name, description, fn, tuple(options))
        return fn

    return deco
