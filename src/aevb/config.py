"""Run configuration: three frozen dataclasses, a JSON round trip, typed overrides.

* :class:`ModelConfig` — everything the model needs and nothing else (the model sees only it).
* :class:`DataConfig` — which data, how it is split and transformed.
* :class:`TrainConfig` — the optimisation loop.

Field names are unique across the three, so every field is one CLI flag spelled with
dashes (``latent_dim`` -> ``--latent-dim``). Values are type-checked; an unknown key is an
error that lists the valid ones (in JSON files and on the command line alike).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """The model's own configuration (serialised as ``config.json["model"]``)."""

    model: str = _f("vae", "model variant from the model registry")
    input_shape: tuple[int, ...] = _f(
        (), "shape of one example, set from the data ((D,) for vectors, (C, H, W) for images)"
    )
    latent_dim: int = _f(2, "dimension of the latent z (2 gives the manifold figure)")
    hidden: tuple[int, ...] = _f(
        (256, 256), "hidden layer widths (mlp) or channels of the stride-2 convolutions (conv)"
    )
    arch: str = _f("mlp", "encoder/decoder architecture", ("mlp", "conv"))
    activation: str = _f("relu", "hidden activation", ("relu", "tanh", "elu", "gelu", "softplus"))
    likelihood: str = _f(
        "auto", "decoder likelihood p(x|z) ('auto' takes the dataset's suggestion)"
    )
    sigma: float = _f(0.1, "Gaussian likelihoods: fixed sigma, or initial value of a learned one")
    sigma_min: float = _f(1e-3, "learned Gaussian sigma is sigma_min + softplus(raw)")
    beta: float = _f(1.0, "weight of the KL term (1 is the ELBO; beta-VAE otherwise)")
    samples: int = _f(1, "Monte-Carlo samples L of z per example in the training objective")
    objective: str = _f("elbo", "training objective from the objective registry")


@dataclass(frozen=True)
class DataConfig:
    """Which data and how it is prepared (serialised as ``config.json["data"]``)."""

    dataset: str = _f(
        "digits",
        "dataset name (see `aevb datasets`) or a path: image folder, .npy/.npz arrays, .csv table",
    )
    data_dir: str | None = _f(
        None, "folder holding downloaded datasets (default $AEVB_DATA or ~/.cache/aevb)"
    )
    split_seed: int = _f(0, "seed of the held-out split for sources that have none")
    valid_fraction: float = _f(0.1, "fraction held out for validation when the source has no split")
    test_fraction: float = _f(0.1, "fraction held out for test when the source has no split")
    synthetic_size: int = _f(5000, "examples generated for synthetic datasets (ring, moons, ...)")
    binarize: str = _f(
        "none",
        "grayscale data in [0, 1]: 'dynamic' draws every training pixel afresh from Bernoulli(x) "
        "each time it is used (valid/test drawn once, seeded); 'threshold' is x > 0.5",
        ("none", "dynamic", "threshold"),
    )
    image_size: tuple[int, ...] = _f(
        (), "image folders: resize every image to H,W (one number: square); empty keeps the size"
    )
    columns: str | None = _f(
        None, "CSV tables: comma-separated names of the numeric columns to use; none: all of them"
    )
    memory_budget_mb: int = _f(
        2048, "image folders larger than this (as float32) are read from disk by DataLoader workers"
    )
    num_workers: int = _f(2, "DataLoader worker processes for data read from disk")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop (serialised as ``config.json["train"]``)."""

    epochs: int = _f(100, "passes over the training split (ignored when --steps is given)")
    steps: int | None = _f(None, "total optimiser steps (takes precedence over --epochs)")
    batch_size: int = _f(128, "examples per optimiser step")
    lr: float = _f(1e-3, "Adam learning rate")
    seed: int = _f(0, "seed of initialisation, data order and sampling noise")
    device: str = _f("auto", "where to train", ("auto", "cpu", "cuda"))
    patience: int | None = _f(None, "stop after this many epochs without a better valid neg-ELBO")
    eval_batch_size: int = _f(1000, "examples per batch when evaluating")
    checkpoint_every: int = _f(0, "write the training checkpoint every N steps (0: every epoch)")
    grad_clip: float | None = _f(None, "clip the gradient norm at this value")
    compile: bool = _f(False, "torch.compile the training step")
    log_every: int = _f(25, "refresh the progress bar every N steps")
    figures: bool = _f(True, "draw the figures at the end of training")


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """The three configs of a run, as stored in ``RUN/config.json``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError("a config must be a JSON object with sections model, data, train")
        unknown = set(d) - set(SECTIONS) - {"aevb_version"}
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {sorted(unknown)}; valid: {sorted(SECTIONS)}"
            )
        parts = {name: from_dict(SECTIONS[name], d.get(name, {})) for name in SECTIONS}
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with flat field overrides (``latent_dim=8``) routed to their section."""
        grouped: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in overrides.items():
            section = field_section(key)
            grouped[section][key] = coerce(SECTIONS[section], key, value)
        return RunConfig(
            **{name: dataclasses.replace(getattr(self, name), **grouped[name]) for name in SECTIONS}
        )


def all_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Map every field name to (section, Field), in declaration order."""
    out: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            assert f.name not in out, f"field {f.name} declared twice"
            out[f.name] = (section, f)
    return out


def field_section(name: str) -> str:
    table = all_fields()
    if name not in table:
        valid = ", ".join("--" + k.replace("_", "-") for k in table)
        raise ConfigError(f"unknown option --{name.replace('_', '-')}; valid options: {valid}")
    return table[name][0]


def _resolved_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert ``value`` (a JSON value or a command-line string) to the field's type.

    Raises:
        ConfigError: naming the field, the expected type and the bad value.
    """
    tp = _resolved_type(cls, name)
    f = next(f for f in fields(cls) if f.name == name)
    flag = "--" + name.replace("_", "-")
    try:
        out = _coerce_type(tp, value)
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} expects {_type_name(tp)}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{flag} must be one of {list(choices)}, got {out!r}")
    return out


def _coerce_type(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce_type(inner[0], value)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        if isinstance(value, str):
            parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
            return tuple(_coerce_type(item, p.strip()) for p in parts)
        if isinstance(value, (list, tuple)):
            return tuple(_coerce_type(item, v) for v in value)
        raise TypeError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError
    if tp is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError(f"unsupported config type {tp}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or 'none'"
    if origin is tuple:
        return "comma-separated integers (e.g. 512,256)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and ill-typed values."""
    if not isinstance(d, dict):
        raise ConfigError(f"config section for {cls.__name__} must be a JSON object")
    names = [f.name for f in fields(cls)]
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {sorted(unknown)}; valid fields: {names}"
        )
    return cls(**{k: coerce(cls, k, v) for k, v in d.items()})
