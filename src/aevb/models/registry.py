"""The model registry: ``--model NAME`` names a class registered here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError, is_out_of_memory

if TYPE_CHECKING:
    from ..config import RunConfig
    from .base import LatentVariableModel

MODELS: dict[str, type[LatentVariableModel]] = {}


def register_model(cls: type[LatentVariableModel]) -> type[LatentVariableModel]:
    """Class decorator: make ``cls`` buildable as ``--model cls.name``."""
    MODELS[cls.name] = cls
    return cls


def build_model(config: RunConfig) -> LatentVariableModel:
    """Instantiate the variant named by ``config.model.model`` from its own sections alone.

    The class receives the model section and the variant sections the model section
    switches on (e.g. ``vae``, ``vamp``), never the objective, data or training settings.
    """
    name = config.model.model
    if name not in MODELS:
        raise ConfigError(f"unknown --model {name!r}; choose one of {sorted(MODELS)}")
    cls = MODELS[name]
    priors = getattr(cls, "priors", ("standard",))
    if config.model.prior not in priors:
        raise ConfigError(
            f"--model {name} supports --prior {' or '.join(priors)}, not {config.model.prior!r}"
        )
    if config.model.likelihood == "auto":
        raise ConfigError(
            "likelihood 'auto' must be resolved from the data before building a model"
        )
    if not config.model.input_shape:
        raise ConfigError("input_shape must be set (from the data) before building a model")
    from ..config import VARIANTS

    sections = {n: v for n, v in config.variants.items() if VARIANTS[n].switch[0] == "model"}
    try:
        model = cls(config.model, sections)
    except (MemoryError, RuntimeError, TypeError) as e:  # TypeError: a size beyond int64
        if not (is_out_of_memory(e) or "Overflow when unpacking" in str(e)):
            raise
        raise ConfigError(
            f"--model {name} with these sizes (--hidden {','.join(map(str, config.model.hidden))}, "
            "the latent and prior settings) does not fit in memory; choose smaller ones"
        ) from None
    model.sections = sections  # what the model was built from, to save it beside its weights
    return model
