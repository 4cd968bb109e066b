"""aevb — Auto-Encoding Variational Bayes: train, evaluate and use VAEs with PyTorch.

The public API is re-exported here and imported on first use, so that ``import aevb`` and
``aevb --help`` do not pay for torch until something needs it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# name -> (module, attribute)
_EXPORTS = {
    "AevbError": ("errors", "AevbError"),
    "CheckpointError": ("errors", "CheckpointError"),
    "ConfigError": ("errors", "ConfigError"),
    "DataError": ("errors", "DataError"),
    "TrainingInterrupted": ("errors", "TrainingInterrupted"),
    "DataConfig": ("config", "DataConfig"),
    "ModelConfig": ("config", "ModelConfig"),
    "ObjectiveConfig": ("config", "ObjectiveConfig"),
    "RunConfig": ("config", "RunConfig"),
    "TrainConfig": ("config", "TrainConfig"),
    "register_section": ("config", "register_section"),
    "DataSource": ("data", "DataSource"),
    "Dataset": ("data", "Dataset"),
    "DatasetInfo": ("data", "DatasetInfo"),
    "from_tensor": ("data", "from_tensor"),
    "from_torch_dataset": ("data", "from_torch_dataset"),
    "load_dataset": ("data", "load_dataset"),
    "LatentSpace": ("latents", "LatentSpace"),
    "Posterior": ("latents", "Posterior"),
    "Prior": ("latents", "Prior"),
    "register_kl": ("latents", "register_kl"),
    "LatentVariableModel": ("models", "LatentVariableModel"),
    "VAE": ("models", "VAE"),
    "build_model": ("models", "build_model"),
    "register_model": ("models", "register_model"),
    "register_likelihood": ("likelihoods", "register_likelihood"),
    "ObjectiveOutput": ("objectives", "ObjectiveOutput"),
    "build_objective": ("objectives", "build_objective"),
    "register_objective": ("objectives", "register_objective"),
    "evaluate": ("evaluate", "evaluate"),
    "evaluate_elbo": ("evaluate", "evaluate_elbo"),
    "markdown_report": ("evaluate", "markdown_report"),
    "load": ("checkpoint", "load_model"),
    "save": ("checkpoint", "save_pretrained"),
    "TrainResult": ("train", "TrainResult"),
    "resume": ("train", "resume"),
    "train": ("train", "train"),
    "train_prior": ("prior_fit", "train_prior"),
}

__all__ = [
    "AevbError",
    "CheckpointError",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DataSource",
    "Dataset",
    "DatasetInfo",
    "LatentSpace",
    "LatentVariableModel",
    "ModelConfig",
    "ObjectiveConfig",
    "ObjectiveOutput",
    "Posterior",
    "Prior",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "VAE",
    "build_model",
    "build_objective",
    "evaluate",
    "evaluate_elbo",
    "from_tensor",
    "from_torch_dataset",
    "load",
    "load_dataset",
    "markdown_report",
    "register_kl",
    "register_likelihood",
    "register_model",
    "register_objective",
    "register_section",
    "resume",
    "save",
    "train",
    "train_prior",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aevb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """``aevb.train`` and ``aevb.evaluate`` are functions, as they always were.

    Importing the submodules of the same names would otherwise bind the modules over the
    functions in this namespace; the modules stay reachable as ``sys.modules['aevb.train']``
    (``from aevb.train import TrainResult`` works as usual).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name, ("", ""))[1] == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .checkpoint import load_model as load
    from .checkpoint import save_pretrained as save
    from .config import (
        DataConfig,
        ModelConfig,
        ObjectiveConfig,
        RunConfig,
        TrainConfig,
        register_section,
    )
    from .data import (
        Dataset,
        DatasetInfo,
        DataSource,
        from_tensor,
        from_torch_dataset,
        load_dataset,
    )
    from .errors import AevbError, CheckpointError, ConfigError, DataError, TrainingInterrupted
    from .evaluate import evaluate, evaluate_elbo, markdown_report
    from .latents import LatentSpace, Posterior, Prior, register_kl
    from .likelihoods import register_likelihood
    from .models import VAE, LatentVariableModel, build_model, register_model
    from .objectives import ObjectiveOutput, build_objective, register_objective
    from .prior_fit import train_prior
    from .train import TrainResult, resume, train
