"""The dataset registry: ``--dataset NAME`` looks a loader up here; a path is user data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import DataConfig
from .base import Dataset

Loader = Callable[[DataConfig], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    load: Loader


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(config) -> Dataset`` under ``name``."""

    def deco(fn: Loader) -> Loader:
        DATASETS[name] = DatasetSpec(name, description, fn)
        return fn

    return deco
