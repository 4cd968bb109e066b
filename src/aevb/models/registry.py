"""The model registry: ``ModelConfig.model`` names a class registered here."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

MODELS: dict[str, type[nn.Module]] = {}


def register_model(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` buildable as ``ModelConfig(model=cls.name)``."""
    MODELS[cls.name] = cls
    return cls


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the model variant named by ``config.model`` from its config alone."""
    if config.model not in MODELS:
        raise ConfigError(f"unknown --model {config.model!r}; choose one of {sorted(MODELS)}")
    return MODELS[config.model](config)
