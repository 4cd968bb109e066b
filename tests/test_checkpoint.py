"""Artifacts: bit-exact save/load, strict loading, atomic writes, nothing unpickled."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import state_dicts_equal

import aevb
from aevb import VAE, CheckpointError, RunConfig, build_model, build_objective
from aevb import checkpoint as ckpt


def _config(**kw) -> RunConfig:
    base = dict(hidden=(32,), steps=6, batch_size=64, figures=False)
    base.update(kw)
    return RunConfig().replace(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> aevb.TrainResult:
    """A digits model with a learned per-pixel sigma (so a likelihood parameter is saved too)."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    return aevb.train(_config(likelihood="gaussian-pixel", latent_dim=3), run, progress=False)


def _model(**kw) -> VAE:
    return build_model(RunConfig().replace(**kw))


def _objective(model, x, eps=None):
    objective = build_objective(RunConfig())
    if eps is None:
        eps = model.latent.noise.draw(1, len(x))
    return objective(model, x, None, eps, {"beta": 1.0})


def _outputs_equal(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    eps = a.latent.noise.draw(1, len(x), generator=torch.Generator().manual_seed(0))
    oa, ob = _objective(a, x, eps), _objective(b, x, eps)
    for name in ("loss", "neg_elbo", "recon_nll", "kl"):
        assert torch.equal(getattr(oa, name), getattr(ob, name)), name
    qa, qb = a.posterior(x), b.posterior(x)
    assert torch.equal(qa.mu, qb.mu) and torch.equal(qa.logvar, qb.logvar)
    assert torch.equal(a.reconstruct(x), b.reconstruct(x))


def test_load_restores_weights_bit_exactly(trained):
    run, model = trained.run_dir, trained.model
    x = torch.rand(10, 1, 8, 8)
    for loaded in (aevb.load(run), ckpt.load_model(run)):
        assert isinstance(loaded, VAE) and not loaded.training
        assert loaded.config == model.config and loaded.sections == model.sections
        assert "likelihood.raw_sigma" in loaded.state_dict()
        assert state_dicts_equal(loaded.state_dict(), model.state_dict())
        _outputs_equal(loaded, model.eval(), x)


@pytest.mark.parametrize(
    "config",
    [
        dict(input_shape=(12,), latent_dim=2, hidden=(8, 4), likelihood="bernoulli"),
        dict(input_shape=(3, 7, 6), arch="conv", hidden=(4, 8), likelihood="gaussian-decoded"),
        dict(input_shape=(1, 5, 5), latent_dim=4, hidden=(), likelihood="gaussian-shared"),
        dict(input_shape=(6,), latent_dim=3, prior="vamp", pseudo_inputs=5, likelihood="gaussian"),
    ],
)
def test_save_pretrained_round_trip(tmp_path, config):
    torch.manual_seed(1)
    model = _model(**config)
    with torch.no_grad():  # move every tensor off its initial value
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    aevb.save(model, tmp_path)
    loaded = aevb.load(tmp_path)
    assert loaded.config == model.config and loaded.sections == model.sections
    assert state_dicts_equal(loaded.state_dict(), model.state_dict())
    _outputs_equal(loaded, model.eval(), torch.rand(4, *config["input_shape"]))


def test_model_file_is_plain_safetensors_of_the_state_dict(trained):
    path = trained.run_dir / ckpt.MODEL_FILE
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    keys = {k for k in header if k != "__metadata__"}
    assert keys == set(trained.model.state_dict())
    assert all(not k.startswith("_orig_mod.") for k in keys)
    for k, v in trained.model.state_dict().items():
        assert header[k]["shape"] == list(v.shape) and header[k]["dtype"] == "F32"
    config = json.loads((trained.run_dir / ckpt.CONFIG_FILE).read_text())
    assert set(config) >= {"model", "data", "train", "dataset_info"}


def test_nothing_is_unpickled(trained, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("aevb unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    aevb.load(trained.run_dir)
    model = ckpt.load_model(trained.run_dir)
    opt = torch.optim.Adam(model.parameters())
    progress = ckpt.load_training_state(trained.run_dir, model, opt)
    assert progress["step"] == 6


def test_loading_is_strict_about_keys_and_shapes(tmp_path):
    model = _model(input_shape=(12,), latent_dim=2, hidden=(8,), likelihood="bernoulli")
    aevb.save(model, tmp_path)
    # A config that no longer matches the weights: shapes differ.
    d = json.loads((tmp_path / ckpt.CONFIG_FILE).read_text())
    d["vae"]["latent_dim"] = 3
    (tmp_path / ckpt.CONFIG_FILE).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="shape"):
        aevb.load(tmp_path)
    # Weights with a key missing and an extra one.
    d["vae"]["latent_dim"] = 2
    (tmp_path / ckpt.CONFIG_FILE).write_text(json.dumps(d))
    state = dict(model.state_dict())
    state["extra.weight"] = state.pop("decoder.net.0.weight")
    ckpt.save_tensors(tmp_path / ckpt.MODEL_FILE, state)
    with pytest.raises(CheckpointError, match=r"missing keys \['decoder.net.0.weight'\]") as e:
        aevb.load(tmp_path)
    assert "extra.weight" in str(e.value)


def _tmp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("write", ["model", "state", "config"])
def test_writes_are_atomic(tmp_path, monkeypatch, write):
    """A crash between writing the temporary file and renaming it leaves the old file whole."""
    model = _model(input_shape=(12,), latent_dim=2, hidden=(8,), likelihood="bernoulli")
    opt = torch.optim.Adam(model.parameters())
    _objective(model, torch.rand(4, 12)).loss.mean().backward()
    opt.step()
    aevb.save(model, tmp_path)
    ckpt.save_training_state(tmp_path, model, opt, {"step": 1})
    target = {"model": ckpt.MODEL_FILE, "state": ckpt.STATE_FILE, "config": ckpt.CONFIG_FILE}[write]
    before = (tmp_path / target).read_bytes()

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def crash(src, dst):
        assert Path(src).is_file() and Path(src).parent == tmp_path  # written beside the target
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled out"):
        if write == "model":
            ckpt.save_model(model, tmp_path)
        elif write == "state":
            ckpt.save_training_state(tmp_path, model, opt, {"step": 2})
        else:
            ckpt.save_config(tmp_path, RunConfig().replace(latent_dim=7))
    monkeypatch.undo()
    assert (tmp_path / target).read_bytes() == before
    assert _tmp_files(tmp_path) == []
    aevb.load(tmp_path)  # still a valid run


def test_atomic_write_replaces_the_file_in_one_step(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    ckpt.atomic_write_bytes(path, b"old")
    ckpt.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_training_state_holds_optimizer_and_rng(trained):
    tensors, meta = ckpt.load_tensors(trained.run_dir / ckpt.STATE_FILE)
    assert "rng.cpu" in tensors
    n_params = len(list(trained.model.parameters()))
    assert {f"optim.{i}.exp_avg" for i in range(n_params)} <= set(tensors)
    assert {f"model.{k}" for k in trained.model.state_dict()} <= set(tensors)
    progress = json.loads(meta["aevb"])["progress"]
    assert progress["step"] == 6 and progress["epoch"] == 0
