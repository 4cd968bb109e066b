"""A trained run as later commands see it: its model, its data, its state.

Every command that reads a run (``evaluate``, ``sample``, ``reconstruct``, ``interpolate``,
``manifold``, ``embed``, ``serve``) goes through here, so they agree on where the data is
(``--data-dir`` first, then the folder recorded at training if it still exists, then
``$AEVB_DATA``, then the default) and on what an unfinished run says.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import RunConfig
from .data import DataSource, load_dataset
from .data.tables import restandardize
from .errors import DataError
from .models import MODELS
from .models.base import LatentVariableModel


def load_run_model(run_dir: str | Path, device: str | torch.device = "cpu") -> LatentVariableModel:
    """The trained model of a finished run (a clear error for an unfinished one)."""
    return ckpt.load_model(run_dir, device=device)


def run_data_config(
    run_dir: str | Path, dataset: str | None = None, data_dir: str | None = None
) -> RunConfig:
    """The run's config with its data section pointed at ``dataset`` / ``data_dir`` if given."""
    config = ckpt.load_config(run_dir)
    data = config.data
    if dataset is not None:
        data = replace(data, dataset=dataset)
    if data_dir is not None:
        data = replace(data, data_dir=data_dir)
    elif data.data_dir is not None and not Path(data.data_dir).expanduser().is_dir():
        # The recorded folder has gone: look where the user now keeps data.
        data = replace(data, data_dir=os.environ.get("AEVB_DATA") or None)
    return replace(config, data=data)


def load_run_dataset(
    run_dir: str | Path, dataset: str | None = None, data_dir: str | None = None
) -> DataSource:
    """The run's dataset (as recorded in its config), or another one of the same shape."""
    config = run_data_config(run_dir, dataset, data_dir)
    ds = load_dataset(config.data)
    check_shape(ds, tuple(config.model.input_shape), run_dir)
    variant = MODELS.get(config.model.model)
    if variant is not None:  # what the model needs of the data (e.g. labels) is there
        variant.fit_config(config, ds.info)
    recorded = ckpt.load_dataset_info(run_dir).get("transform", {})
    return restandardize(ds, recorded)


def check_shape(ds: DataSource, expected: tuple[int, ...], run_dir: str | Path) -> None:
    if tuple(ds.info.shape) != expected:
        raise DataError(
            f"{ds.info.name} has examples of shape {tuple(ds.info.shape)} but the model of "
            f"{run_dir} expects {expected}"
        )
