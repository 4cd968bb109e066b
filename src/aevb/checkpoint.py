"""Where a run is written and read back: the model artifact and the training state.

A run directory holds

* ``config.json`` — model, data and training configs (+ ``dataset_info``: shape, range,
  transform), JSON;
* ``model.safetensors`` — the weights of the unwrapped, uncompiled model, written when
  training ends (its presence marks a finished run);
* ``training_state.safetensors`` — everything needed to continue bit-exactly: the
  model's and optimizer's tensors, RNG states, and (in its JSON metadata) step, epoch,
  param groups, early-stopping state and the config it was trained with;
* ``metrics.jsonl``, ``figures/`` and ``snapshots/`` (weights of chosen epochs).

Every file is written atomically: to a temporary file in the same directory, flushed
and fsync'ed, then renamed over the target, so a crash leaves the old file or the new
one, never half of one. Non-finite weights or optimizer state are never written
(:class:`NonFiniteStateError`), so the last good checkpoint survives a divergence.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from .config import CONFIG_VERSION, RunConfig
from .errors import AevbError, CheckpointError
from .files import FILE_MODE, atomic_write_bytes, atomic_write_text  # noqa: F401  (part of this module's API)
from .rundir import (
    CONFIG_FILE,
    FIGURES_DIR,
    METRICS_FILE,
    MODEL_FILE,
    SNAPSHOTS_DIR,
    STATE_FILE,
    state_step,
)

__all__ = [
    "CONFIG_FILE",
    "FIGURES_DIR",
    "METRICS_FILE",
    "MODEL_FILE",
    "SNAPSHOTS_DIR",
    "STATE_FILE",
]


class NonFiniteStateError(AevbError):
    """Weights or optimizer state hold NaN or inf: refused, so the last good file stays."""


# --- config ---------------------------------------------------------------------------
def save_config(
    run_dir: str | Path, config: RunConfig, dataset_info: dict[str, Any] | None = None
) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, config_json(config, dataset_info))


def config_json(config: RunConfig, dataset_info: dict[str, Any] | None = None) -> str:
    """The text of ``config.json``: version, the config's sections, the dataset's record."""
    from . import __version__

    d: dict[str, Any] = {
        "aevb_version": __version__,
        "config_version": CONFIG_VERSION,
        **config.to_dict(),
    }
    if dataset_info is not None:
        d["dataset_info"] = dataset_info
    return json.dumps(jsonable(d), indent=2) + "\n"


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (strict JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def read_config_dict(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise CheckpointError(f"{run_dir} is a file; give the run directory that holds it")
    if not run_dir.is_dir():
        raise CheckpointError(
            f"run directory {run_dir} does not exist; train one with `aevb train --out {run_dir}`"
        )
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an aevb run: {CONFIG_FILE} is missing")
    try:
        d = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        raise CheckpointError(f"{path} is corrupt (not JSON: {e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is corrupt (not a JSON object)")
    return d


def load_config(run_dir: str | Path) -> RunConfig:
    """The :class:`RunConfig` stored in ``run_dir/config.json``."""
    d = read_config_dict(run_dir)
    d = {k: v for k, v in d.items() if k != "dataset_info"}
    try:
        return RunConfig.from_dict(d)
    except AevbError as e:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_FILE} is invalid: {e}") from None


def load_dataset_info(run_dir: str | Path) -> dict[str, Any]:
    info = read_config_dict(run_dir).get("dataset_info", {})
    if not isinstance(info, dict):
        raise CheckpointError(
            f"{Path(run_dir) / CONFIG_FILE} is corrupt (its dataset_info is not a JSON object); "
            "restore the file, or retrain"
        )
    return info


# --- tensors --------------------------------------------------------------------------
def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """safetensors bytes of CPU-contiguous copies, written atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a clear error if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"weights file {path} is corrupt ({e}); retrain or restore it"
        ) from None
    return tensors, header.get("__metadata__", {}) or {}


def save_model(model: nn.Module, run_dir: str | Path) -> None:
    """Write the model's weights to ``run_dir/model.safetensors`` (unwrap compiled/DDP first)."""
    save_tensors(
        Path(run_dir) / MODEL_FILE, unwrap(model).state_dict(), {"format": "pt", "aevb": "model"}
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy ``state`` into ``model``; missing/unexpected keys and shape mismatches are errors."""
    check_state(model, state, source)
    model.load_state_dict(state, strict=True)


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Raise a CheckpointError unless ``state`` has exactly the keys and shapes of ``model``'s."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model in config.json: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{source}: tensor {k} has shape {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
            )


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model of a run from its config and restore its weights bit-exactly.

    Example:
        >>> model = aevb.load("runs/digits-20261122-101500")  # doctest: +SKIP
    """
    from .models import build_model

    config = load_config(run_dir)
    check_finished(run_dir)
    try:
        model = build_model(config)
    except AevbError as e:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_FILE}: {e}") from None
    path = Path(run_dir) / MODEL_FILE
    tensors, _ = load_tensors(path)
    check_finite(tensors, f"weights file {path}")
    load_state_strict(model, tensors, path)
    return model.to(device).eval()


def check_finished(run_dir: str | Path) -> None:
    """Raise a clear error for a run whose training has not finished (no model file)."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file():
        return
    step = state_step(run_dir)
    if step is not None:
        raise CheckpointError(
            f"{run_dir} is unfinished at step {step}: continue it with "
            f"`aevb train --resume {run_dir}` (model.safetensors is written when training ends)"
        )
    raise CheckpointError(
        f"{run_dir} has no trained model ({MODEL_FILE} is missing and there is no training "
        f"state); train it with `aevb train --out {run_dir}`"
    )


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse tensors with NaN or inf, naming the first offender."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise NonFiniteStateError(
                f"{what} holds NaN or inf values (in {k}): the run diverged; continue from an "
                "earlier checkpoint with a lower --lr, or retrain"
            )


def save_pretrained(model: nn.Module, run_dir: str | Path) -> None:
    """Write a model built from Python as a loadable run: ``config.json`` + ``model.safetensors``.

    An existing run's data and training sections (and dataset record) are kept.

    Example:
        >>> aevb.save(model, "runs/mine"); same = aevb.load("runs/mine")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    model = unwrap(model)
    d = read_config_dict(run_dir) if (run_dir / CONFIG_FILE).is_file() else {}
    base = RunConfig.from_dict({k: v for k, v in d.items() if k not in ("dataset_info",)})
    config = RunConfig(
        model=model.config,
        objective=base.objective,
        data=base.data,
        train=base.train,
        variants={**base.variants, **model.sections},
    )
    save_config(run_dir, config, d.get("dataset_info"))
    save_model(model, run_dir)


# --- training state -------------------------------------------------------------------
def save_training_state(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict[str, Any],
    best: dict[str, torch.Tensor] | None = None,
    config: RunConfig | None = None,
) -> None:
    """Write everything needed to continue training bit-exactly, as one atomic file.

    ``best`` (early stopping) is the state dict of the best weights so far; ``config`` the
    configuration the state was trained with.

    Raises:
        NonFiniteStateError: if a weight or optimizer tensor is NaN or inf (nothing written).
    """
    tensors: dict[str, torch.Tensor] = {}
    for k, v in unwrap(model).state_dict().items():
        tensors[f"model.{k}"] = v
    for k, v in (best or {}).items():
        tensors[f"best.{k}"] = v
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                opt_scalars.setdefault(str(idx), {})[name] = value
    check_finite(tensors, "the training state")
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "progress": progress,
        "param_groups": opt["param_groups"],
        "optim_scalars": opt_scalars,
    }
    if config is not None:
        meta["config"] = config.to_dict()
    save_tensors(Path(run_dir) / STATE_FILE, tensors, {"format": "pt", "aevb": json.dumps(meta)})


def load_training_state(
    run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; return the saved progress dict."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: {STATE_FILE} is missing")
    tensors, metadata = load_tensors(path)
    try:
        meta = json.loads(metadata["aevb"])
        if not isinstance(meta, dict):
            raise ValueError
    except (KeyError, ValueError, RecursionError):
        raise CheckpointError(f"{path} is corrupt (no training metadata)") from None
    check_finite({k: v for k, v in tensors.items() if not k.startswith("rng.")}, str(path))
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    load_state_strict(unwrap(model), model_state, path)
    state: dict[int, dict[str, Any]] = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for idx, scalars in meta.get("optim_scalars", {}).items():
            state.setdefault(int(idx), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: its optimizer state is corrupt or does not match the model ({e}); "
            "restore the file or start a new run"
        ) from None
    try:
        torch.set_rng_state(tensors["rng.cpu"])
        cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(
            f"{path} is corrupt (its random-number state cannot be restored: {e}); "
            "restore the file or start a new run"
        ) from None
    progress = meta.get("progress")
    if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise CheckpointError(f"{path} is corrupt (no training progress in its metadata)")
    return progress


def load_best_weights(
    run_dir: str | Path, model: nn.Module | None = None
) -> dict[str, torch.Tensor] | None:
    """The best weights kept by early stopping in the training state, or None.

    With ``model``, they must have its keys and shapes (a CheckpointError otherwise).
    """
    path = Path(run_dir) / STATE_FILE
    tensors, _ = load_tensors(path)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    if best and model is not None:
        check_state(unwrap(model), best, f"{path} (its early-stopping weights)")
    return best or None


# --- metrics --------------------------------------------------------------------------
def append_metrics(run_dir: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to metrics.jsonl (one small write of a whole line)."""
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(jsonable(record)) + "\n")
        f.flush()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut by a crash
            if isinstance(record, dict):  # a line of something else is not a record
                out.append(record)
    return out


def _step_of(record: dict[str, Any]) -> float:
    """A record's step (inf if it has none that is a number: dropped on truncation)."""
    step = record.get("step")
    return step if type(step) in (int, float) else math.inf


def truncate_metrics(run_dir: str | Path, max_step: int) -> None:
    """Drop metric records logged after the checkpoint being resumed (rewritten atomically)."""
    records = [r for r in read_metrics(run_dir) if _step_of(r) <= max_step]
    text = "".join(json.dumps(jsonable(r)) + "\n" for r in records)
    atomic_write_text(Path(run_dir) / METRICS_FILE, text)


def save_snapshot(model: nn.Module, run_dir: str | Path, epoch: int) -> None:
    """Keep the weights after ``epoch`` in ``snapshots/epoch-N.safetensors`` (learning curves)."""
    path = Path(run_dir) / SNAPSHOTS_DIR / f"epoch-{epoch}.safetensors"
    save_tensors(
        path, unwrap(model).state_dict(), {"format": "pt", "aevb": "model", "epoch": str(epoch)}
    )
