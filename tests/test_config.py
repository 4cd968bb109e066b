"""Configuration: JSON round trip, typed overrides, loud failures on unknown or ill-typed keys."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import run_cli

from aevb import ConfigError, DataConfig, ModelConfig, ObjectiveConfig, RunConfig, TrainConfig
from aevb.cli import _overrides, build_parser
from aevb.config import VARIANTS, all_fields, short_names


def test_json_round_trip_is_exact():
    config = RunConfig().replace(
        latent_dim=8,
        hidden="64,32",
        arch="conv",
        beta=0.5,
        samples=3,
        steps=100,
        patience=None,
        grad_clip=1.5,
        compile=True,
        data_dir="/tmp/x",
        dataset="ring",
    )
    text = config.to_json()
    back = RunConfig.from_json(text)
    assert back == config
    assert back.model.hidden == (64, 32) and isinstance(back.model.hidden, tuple)
    assert back.to_json() == text
    assert json.loads(text)["model"]["hidden"] == [64, 32]


def test_configs_are_frozen():
    config = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden = (3,)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().vae.latent_dim = 3  # type: ignore[misc]


def test_every_field_is_a_flag_with_help():
    core = (ModelConfig, ObjectiveConfig, DataConfig, TrainConfig)
    sections = [*core, *(spec.cls for spec in VARIANTS.values())]
    names = [f.name for cls in sections for f in dataclasses.fields(cls)]
    assert len(names) == len(all_fields())
    help_text = run_cli("train", "--help").out
    for qualified, (_, f) in all_fields().items():
        assert "--" + qualified.replace("_", "-") in help_text  # --section.field, always
        if short_names().get(f.name) == qualified:
            assert "--" + f.name.replace("_", "-") in help_text  # and --field where unique
    for flag in (
        "--dataset",
        "--latent-dim",
        "--hidden",
        "--arch",
        "--likelihood",
        "--beta",
        "--samples",
        "--epochs",
        "--steps",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
    ):
        assert flag in help_text


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"model": {"latent_dimm": 3}})
    assert "latent_dimm" in str(e.value) and "latent_dim" in str(e.value).replace("latent_dimm", "")
    with pytest.raises(ConfigError, match="valid"):
        RunConfig.from_dict({"optimiser": {}})
    with pytest.raises(ConfigError) as e:
        RunConfig().replace(latnt_dim=3)
    assert "--latnt-dim" in str(e.value) and "--latent-dim" in str(e.value)
    assert "--batch-size" in str(e.value)  # the whole list, not just near misses


@pytest.mark.parametrize(
    "override, words",
    [
        ({"latent_dim": "two"}, ["--latent-dim", "integer", "'two'"]),
        ({"latent_dim": 2.5}, ["--latent-dim", "integer"]),
        ({"lr": "fast"}, ["--lr", "number"]),
        ({"compile": "maybe"}, ["--compile", "true or false"]),
        ({"hidden": "64,abc"}, ["--hidden", "comma-separated"]),
        ({"device": "tpu"}, ["--device", "'cpu'"]),
        ({"arch": "transformer"}, ["--arch", "mlp"]),
        ({"epochs": True}, ["--epochs", "integer"]),
    ],
)
def test_wrong_type_is_an_error_naming_the_flag(override, words):
    with pytest.raises(ConfigError) as e:
        RunConfig().replace(**override)
    for w in words:
        assert w in str(e.value)


def test_wrong_type_in_a_json_file():
    with pytest.raises(ConfigError, match="--batch-size expects an integer"):
        RunConfig.from_json('{"train": {"batch_size": "big"}}')
    with pytest.raises(ConfigError, match="not valid JSON"):
        RunConfig.from_json("{model: }")
    with pytest.raises(ConfigError, match="JSON object"):
        RunConfig.from_json("[1, 2]")


@pytest.mark.parametrize(
    "text, expected",
    [("64,32", (64, 32)), ("64", (64,)), ("128x64", (128, 64)), ("", ()), ("8, 4,", (8, 4))],
)
def test_hidden_parsing(text, expected):
    assert RunConfig().replace(hidden=text).model.hidden == expected


def test_values_from_the_command_line_are_typed():
    config = RunConfig().replace(
        latent_dim="4",
        lr="3e-4",
        steps="none",
        patience="5",
        compile="true",
        figures="no",
        grad_clip="null",
        epochs=3.0,
    )
    assert config.vae.latent_dim == 4
    assert config.train.lr == 3e-4
    assert config.train.steps is None and config.train.grad_clip is None
    assert config.train.patience == 5 and config.train.epochs == 3
    assert config.train.compile is True and config.train.figures is False


def _cli_overrides(*argv: str) -> RunConfig:
    args = build_parser().parse_args(["train", *argv])
    return RunConfig().replace(**_overrides(args))


def test_cli_flags_reach_the_config():
    config = _cli_overrides(
        "--hidden",
        "64,32",
        "--latent-dim",
        "5",
        "--likelihood",
        "gaussian",
        "--batch-size",
        "32",
        "--dataset",
        "ring",
        "--valid-fraction",
        "0.2",
    )
    assert config.model.hidden == (64, 32) and config.vae.latent_dim == 5
    assert config.model.likelihood == "gaussian" and config.train.batch_size == 32
    assert config.data.dataset == "ring" and config.data.valid_fraction == 0.2
    # Unset flags keep their defaults.
    assert config.train.lr == TrainConfig().lr and config.objective.beta == ObjectiveConfig().beta


def test_bool_flags():
    assert _cli_overrides("--compile").train.compile is True  # bare flag means true
    assert _cli_overrides("--compile", "false").train.compile is False
    assert _cli_overrides("--figures", "off").train.figures is False
    assert _cli_overrides("--figures", "yes").train.figures is True
    assert _cli_overrides().train.figures is True


def test_config_file_plus_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"latent_dim": 6}, "train": {"steps": 3}}))  # partial
    args = build_parser().parse_args(["train", "--config", str(path), "--steps", "4"])
    config = RunConfig.from_json(path.read_text())  # a 0.1-style model section still reads
    config = config.replace(**_overrides(args))
    assert config.vae.latent_dim == 6 and config.train.steps == 4
    assert config.model.hidden == ModelConfig().hidden
