"""Run configuration: frozen dataclass sections, a JSON round trip, typed and validated flags.

A run's ``config.json`` has four core sections, always present:

* ``model`` (:class:`ModelConfig`) — which model, its networks and its likelihood;
* ``objective`` (:class:`ObjectiveConfig`) — which bound is trained, the KL weight and its
  schedule, free bits;
* ``data`` (:class:`DataConfig`) — which data and how it is split and transformed;
* ``train`` (:class:`TrainConfig`) — the optimisation loop and its learning-rate schedule;

plus one section per *variant* in use, registered with :func:`register_section` and
active only when its switch is on (``vae`` for the Gaussian latent of ``--model vae``,
``iwae`` for ``--objective iwae``, ``hvae``, ``vamp`` for ``--prior vamp``, ...). A model
sees only its own sections. Each field is a command-line flag: ``--section.field`` always,
and the short ``--field`` when no other section has a field of that name
(``latent_dim`` -> ``--latent-dim``, ``--vae.latent-dim``). Values are type-checked and
range-checked when a section is built, so a bad number fails before anything is read or
written, whether it comes from a flag, a JSON file or Python; a flag of a section that is
not in use is an error naming the switch that would enable it.

This module imports neither torch nor numpy: ``aevb --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

CONFIG_VERSION = 2


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    meta = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


# --- checks shared by the sections ---------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _at_least(obj: Any, least: float, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not value >= least:
            raise ConfigError(f"{_flag(name)} must be >= {least:g}, got {value}")


def _positive_finite(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
        if not ok:
            what = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{_flag(name)} must be a finite number {what}, got {value}")


# --- the core sections ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """The model: variant, networks, likelihood and prior (``config.json["model"]``)."""

    model: str = _f("vae", "model variant from the model registry (see the README's model table)")
    input_shape: tuple[int, ...] = _f(
        (), "shape of one example, set from the data ((D,) for vectors, (C, H, W) for images)"
    )
    hidden: tuple[int, ...] = _f(
        (256, 256), "hidden layer widths (mlp) or channels of the stride-2 convolutions (conv)"
    )
    arch: str = _f(
        "mlp",
        "encoder/decoder architecture (resnet: residual blocks at every resolution, for 32x32 "
        "colour images)",
        ("mlp", "conv", "resnet"),
    )
    activation: str = _f("relu", "hidden activation", ("relu", "tanh", "elu", "gelu", "softplus"))
    likelihood: str = _f(
        "auto", "decoder likelihood p(x|z) ('auto' takes the dataset's suggestion)"
    )
    sigma: float = _f(0.1, "Gaussian likelihoods: fixed sigma, or initial value of a learned one")
    sigma_min: float = _f(1e-3, "learned Gaussian sigma is sigma_min + softplus(raw)")
    prior: str = _f("standard", "prior p(z): 'standard' N(0, I), or 'vamp' (VampPrior)")

    def __post_init__(self) -> None:
        if any(s <= 0 for s in self.input_shape):
            raise ConfigError(f"input_shape must be positive sizes, got {self.input_shape}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden sizes must be >= 1, got {self.hidden}")
        _positive_finite(self, "sigma")
        _positive_finite(self, "sigma_min", allow_zero=True)


@dataclass(frozen=True)
class ObjectiveConfig:
    """What training maximises, and how the KL term is weighted (``config.json["objective"]``).

    beta schedules (pure functions of the step, see :mod:`aevb.schedules`): ``constant``
    (beta throughout); ``linear`` warm-up from ``beta_start`` to beta over
    ``beta_warmup_steps`` (Bowman et al. 2016; Sønderby et al. 2016); ``cyclical``: cycles of
    ``beta_period_steps``, each rising linearly from ``beta_start`` to beta over the first
    ``beta_ratio`` of the cycle, then flat (Fu et al. 2019, https://arxiv.org/abs/1903.10145).
    Free bits (Kingma et al. 2016, https://arxiv.org/abs/1606.04934): the KL of each latent
    dimension (or group), averaged over the batch, counts as at least ``free_bits`` nats.
    """

    objective: str = _f("elbo", "training objective: 'elbo' or 'iwae' (importance-weighted bound)")
    beta: float = _f(1.0, "weight of the KL term (1 is the ELBO; beta-VAE otherwise)")
    beta_schedule: str = _f(
        "constant", "how beta moves with the step", ("constant", "linear", "cyclical")
    )
    beta_start: float = _f(0.0, "beta at the start of a warm-up or of each cycle")
    beta_warmup_steps: int = _f(10_000, "linear schedule: steps from beta_start to beta")
    beta_period_steps: int = _f(10_000, "cyclical schedule: steps per cycle")
    beta_ratio: float = _f(0.5, "cyclical schedule: fraction of each cycle spent rising")
    free_bits: float = _f(0.0, "minimum KL in nats per latent dimension (or group) in the loss")
    free_bits_per: str = _f(
        "dim", "free bits per latent 'dim' or per latent 'group'", ("dim", "group")
    )

    def __post_init__(self) -> None:
        _positive_finite(self, "beta", "beta_start", "free_bits", allow_zero=True)
        _at_least(self, 1, "beta_warmup_steps", "beta_period_steps")
        if not 0 < self.beta_ratio <= 1:
            raise ConfigError(f"--beta-ratio must be in (0, 1], got {self.beta_ratio}")


@dataclass(frozen=True)
class DataConfig:
    """Which data and how it is prepared (``config.json["data"]``)."""

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
    label_column: str | None = _f(
        None, "CSV tables: the column holding class labels (taken out of the features)"
    )
    dequantize: str = _f(
        "none",
        "8-bit data (v/255): 'uniform' adds U(-1/2, 1/2)/255 to every training value each time "
        "it is used (for continuous likelihoods; valid/test keep their values)",
        ("none", "uniform"),
    )

    def __post_init__(self) -> None:
        if self.binarize != "none" and self.dequantize != "none":
            raise ConfigError(
                "--binarize and --dequantize exclude each other (binary data need no "
                "dequantisation): drop one"
            )
        if self.label_column is not None and not self.label_column.strip():
            raise ConfigError("--label-column is empty; name the CSV column holding the labels")
        if self.dataset.strip() == "":
            raise ConfigError("--dataset is empty; give a dataset name or a path")
        for name in ("dataset", "data_dir"):
            value = getattr(self, name)
            if value and value.startswith("~") and os.path.expanduser(value).startswith("~"):
                raise ConfigError(
                    f"{_flag(name)} {value}: there is no such user's home folder; give the full path"
                )
        _at_least(self, 0, "split_seed", "memory_budget_mb", "num_workers")
        _at_least(self, 3, "synthetic_size")
        for name in ("valid_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"{_flag(name)} must be in (0, 1), got {value}")
        if self.valid_fraction + self.test_fraction >= 1:
            raise ConfigError("--valid-fraction and --test-fraction must sum below 1")
        if any(not 1 <= s <= 2**16 for s in self.image_size) or len(self.image_size) > 2:
            raise ConfigError(
                f"--image-size must be one or two sizes from 1 to 65536 (H,W), got {self.image_size}"
            )
        if self.columns is not None and not [c for c in self.columns.split(",") if c.strip()]:
            raise ConfigError(f"--columns {self.columns!r} names no column; e.g. --columns a,b,c")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop (``config.json["train"]``).

    Learning-rate schedules (pure functions of the step, :mod:`aevb.schedules`):
    ``constant``; ``cosine``: linear warm-up over ``warmup_epochs``, then a cosine from lr
    down to ``lr_min`` at the last step; ``burda``: Burda et al. (2015)'s 3^i epochs at
    lr·10^(-i/7), i = 0..7 — as a preset it also sets their batch size 20, Adam eps 1e-4
    and 3,280 epochs, unless those are given too.
    """

    epochs: int = _f(100, "passes over the training split (ignored when --steps is given)")
    steps: int | None = _f(None, "total optimiser steps (takes precedence over --epochs)")
    batch_size: int = _f(128, "examples per optimiser step")
    lr: float = _f(1e-3, "Adam learning rate (the peak of a schedule)")
    schedule: str = _f(
        "constant", "learning-rate schedule (also a preset)", ("constant", "cosine", "burda")
    )
    warmup_epochs: float = _f(0.0, "cosine schedule: epochs of linear warm-up from 0")
    lr_min: float = _f(0.0, "cosine schedule: learning rate at the last step")
    adam_eps: float = _f(1e-8, "Adam's epsilon")
    seed: int = _f(0, "seed of initialisation, data order and sampling noise")
    device: str = _f("auto", "where to train", ("auto", "cpu", "cuda"))
    patience: int | None = _f(None, "stop after this many epochs without a better valid neg-ELBO")
    eval_batch_size: int = _f(1000, "examples per batch when evaluating")
    checkpoint_every: int = _f(0, "write the training checkpoint every N steps (0: every epoch)")
    snapshot_epochs: tuple[int, ...] = _f(
        (), "also keep the weights of these epochs in snapshots/epoch-N.safetensors"
    )
    grad_clip: float | None = _f(None, "clip the gradient norm at this value")
    max_skipped_steps: int = _f(
        20, "stop after this many consecutive steps with a non-finite loss or gradient"
    )
    compile: bool = _f(False, "torch.compile the training step")
    log_every: int = _f(
        25, "refresh the progress bar (and log the TensorBoard step loss) every N steps"
    )
    figures: bool = _f(True, "draw the figures at the end of training")
    tensorboard: bool = _f(
        False,
        "also log metrics and pictures to RUN/tensorboard/ (needs pip install 'aevb[tensorboard]')",
    )

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "steps", "batch_size", "eval_batch_size", "log_every")
        _at_least(self, 1, "patience", "max_skipped_steps")
        _at_least(self, 0, "checkpoint_every", "seed")
        _positive_finite(self, "lr", "adam_eps", "grad_clip")
        _positive_finite(self, "warmup_epochs", "lr_min", allow_zero=True)
        if any(e < 1 for e in self.snapshot_epochs):
            raise ConfigError(f"--snapshot-epochs must be epochs >= 1, got {self.snapshot_epochs}")


CORE: dict[str, type] = {
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "data": DataConfig,
    "train": TrainConfig,
}


# --- variant sections -----------------------------------------------------------------------
@dataclass(frozen=True)
class SectionSpec:
    """A registered variant section: its dataclass and the switch that turns it on."""

    name: str
    cls: type
    switch: tuple[str, str]  # (core section, field)
    values: tuple[str, ...]  # the switch's values for which the section is in use

    def active(self, core: Mapping[str, Any]) -> bool:
        section, name = self.switch
        return getattr(core[section], name) in self.values

    def when(self) -> str:
        return " or ".join(f"{_flag(self.switch[1])} {v}" for v in self.values)


VARIANTS: dict[str, SectionSpec] = {}
_FIELD_CACHE: dict[str, Any] = {}  # flag tables, rebuilt when a section is registered


def register_section(
    name: str, switch: tuple[str, str], values: str | tuple[str, ...]
) -> Callable[[type], type]:
    """Class decorator: a frozen dataclass becomes config section ``name``, in use when
    ``switch`` (a core ``(section, field)``) takes one of ``values``.

    Example:
        >>> @register_section("mymodel", ("model", "model"), "mymodel")  # doctest: +SKIP
        ... @dataclass(frozen=True)
        ... class MyModelConfig:
        ...     width: int = 64
    """
    values = (values,) if isinstance(values, str) else tuple(values)

    def deco(cls: type) -> type:
        if name in CORE:
            raise ValueError(f"{name!r} is a core section")
        VARIANTS[name] = SectionSpec(name, cls, switch, values)
        _FIELD_CACHE.clear()
        return cls

    return deco


@register_section("vae", ("model", "model"), ("vae", "cvae"))
@dataclass(frozen=True)
class VAEConfig:
    """The Gaussian latent of the VAE (Kingma & Welling 2013)."""

    latent_dim: int = _f(2, "dimension of the latent z (2 gives the manifold figure)")

    def __post_init__(self) -> None:
        _at_least(self, 1, "latent_dim")


@register_section("elbo", ("objective", "objective"), "elbo")
@dataclass(frozen=True)
class ELBOConfig:
    """The ELBO with L reparameterised samples per example (Kingma & Welling, eq. 10)."""

    samples: int = _f(1, "Monte-Carlo samples L of z per example in the training objective")

    def __post_init__(self) -> None:
        _at_least(self, 1, "samples")


@register_section("iwae", ("objective", "objective"), "iwae")
@dataclass(frozen=True)
class IWAEConfig:
    """The k-sample importance-weighted bound (Burda et al. 2015, https://arxiv.org/abs/1509.00519)."""

    k: int = _f(50, "importance samples per example in the IWAE bound")

    def __post_init__(self) -> None:
        _at_least(self, 1, "k")


@register_section("vamp", ("model", "prior"), "vamp")
@dataclass(frozen=True)
class VampConfig:
    """VampPrior: a mixture of the posteriors of learned pseudo-inputs (Tomczak & Welling 2018)."""

    pseudo_inputs: int = _f(500, "number K of learned pseudo-inputs (mixture components)")

    def __post_init__(self) -> None:
        _at_least(self, 1, "pseudo_inputs")


@register_section("hvae", ("model", "model"), "hvae")
@dataclass(frozen=True)
class HVAEConfig:
    """Two stochastic layers (Burda et al. 2015): x -> z1 -> z2, with p(z1|z2) p(z2)."""

    latent_dims: tuple[int, ...] = _f((100, 50), "sizes of z1 and z2")
    hidden_top: tuple[int, ...] = _f((100, 100), "hidden widths between z1 and z2 (both ways)")

    def __post_init__(self) -> None:
        if len(self.latent_dims) != 2 or any(d < 1 for d in self.latent_dims):
            raise ConfigError(
                f"--latent-dims must be two sizes >= 1 (z1,z2), got {self.latent_dims}"
            )
        if any(h < 1 for h in self.hidden_top):
            raise ConfigError(f"--hidden-top sizes must be >= 1, got {self.hidden_top}")


@register_section("dmol", ("model", "likelihood"), "dmol")
@dataclass(frozen=True)
class DMOLConfig:
    """The discretized logistic mixture likelihood of 8-bit images (Salimans et al. 2017)."""

    mixtures: int = _f(10, "logistic mixture components per pixel")

    def __post_init__(self) -> None:
        _at_least(self, 1, "mixtures")


@register_section("gumbel", ("model", "model"), "gumbel")
@dataclass(frozen=True)
class GumbelConfig:
    """N categorical latents of C classes trained by Gumbel-softmax (Jang, Gu & Poole 2016,
    https://arxiv.org/abs/1611.01144), with a uniform prior.

    The temperature follows their anneal, a pure function of the step:
    ``tau = max(tau_min, tau_start * exp(-tau_rate * t))``, with t the step rounded down to
    a multiple of ``tau_every``.
    """

    variables: int = _f(20, "number N of categorical latent variables")
    categories: int = _f(10, "classes C of each categorical latent variable")
    straight_through: bool = _f(
        False, "straight-through Gumbel-softmax: one-hot forward pass, relaxed gradient"
    )
    tau_start: float = _f(1.0, "Gumbel-softmax temperature at step 0")
    tau_min: float = _f(0.5, "floor of the annealed temperature")
    tau_rate: float = _f(1e-4, "anneal rate r of tau = max(tau_min, tau_start exp(-r t))")
    tau_every: int = _f(500, "steps between temperature updates")

    def __post_init__(self) -> None:
        _at_least(self, 1, "variables", "tau_every")
        _at_least(self, 2, "categories")
        _positive_finite(self, "tau_start", "tau_min")
        _positive_finite(self, "tau_rate", allow_zero=True)

    def schedules(self) -> dict[str, Callable[[int], float]]:
        """``{"tau": step -> temperature}``, which the trainer hands to the objective."""
        from functools import partial

        from .schedules import exponential_anneal

        tau = partial(
            exponential_anneal,
            start=self.tau_start,
            floor=self.tau_min,
            rate=self.tau_rate,
            every=self.tau_every,
        )
        return {"tau": tau}


@register_section("vqvae", ("model", "model"), "vqvae")
@dataclass(frozen=True)
class VQVAEConfig:
    """A grid of codes from a learned codebook (van den Oord et al. 2017,
    https://arxiv.org/abs/1711.00937), and the gated PixelCNN that ``aevb train-prior`` fits
    over the codes afterwards. The grid is the image halved once per ``--hidden`` entry."""

    codebook_size: int = _f(512, "number K of codebook entries")
    code_dim: int = _f(64, "dimension D of each codebook entry (the encoder's output channels)")
    commitment: float = _f(0.25, "weight beta of the commitment loss")
    ema: bool = _f(False, "update the codebook by exponential moving averages, not gradients")
    ema_decay: float = _f(0.99, "decay of the codebook's moving averages (with --ema)")
    restart_after: int = _f(
        0, "re-initialise an entry unused for this many steps from encoder outputs (0: never)"
    )
    res_blocks: int = _f(
        2, "residual blocks after the strided convolutions (and before the decoder's)"
    )
    pixelcnn_channels: int = _f(64, "hidden channels of the PixelCNN prior over the codes")
    pixelcnn_layers: int = _f(6, "gated layers of the PixelCNN prior")
    pixelcnn_kernel: int = _f(3, "kernel size of the PixelCNN prior's masked convolutions (odd)")

    def __post_init__(self) -> None:
        _at_least(self, 1, "codebook_size", "code_dim", "pixelcnn_channels", "pixelcnn_layers")
        _at_least(self, 0, "restart_after", "res_blocks")
        _positive_finite(self, "commitment", allow_zero=True)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.pixelcnn_kernel < 3 or self.pixelcnn_kernel % 2 == 0:
            raise ConfigError(f"--pixelcnn-kernel must be odd and >= 3, got {self.pixelcnn_kernel}")


@register_section("cvae", ("model", "model"), "cvae")
@dataclass(frozen=True)
class CVAEConfig:
    """The conditional VAE (Sohn et al. 2015; Doersch 2016, sec. 4): conditioned on the class
    label, or on the observed part of an image to complete the rest."""

    condition: str = _f(
        "label",
        "what the model conditions on: the class 'label', or the observed part of each image "
        "('mask': it completes the rest)",
        ("label", "mask"),
    )
    label_embedding: str = _f(
        "onehot",
        "--condition label: the label as a one-hot vector or a learned embedding",
        ("onehot", "learned"),
    )
    conditional_prior: bool = _f(
        False, "learn the prior p(z|y) = N(mu(y), diag sigma(y)^2) instead of N(0, I)"
    )
    context_dim: int = _f(
        16, "width of the learned label embedding, or of the features of the observed part"
    )
    mask: str = _f(
        "top",
        "--condition mask: the observed part: the top or left half, the central columns, or a "
        "fixed random half of the pixels",
        ("top", "left", "center", "random"),
    )
    mask_seed: int = _f(0, "--mask random: seed of the fixed random pattern")
    num_classes: int | None = _f(None, "--condition label: classes (set from the data)")

    def __post_init__(self) -> None:
        _at_least(self, 1, "context_dim", "num_classes")
        _at_least(self, 0, "mask_seed")
        if self.condition == "mask" and self.label_embedding != "onehot":
            raise ConfigError("--label-embedding applies only with --condition label")
        if self.condition == "mask" and self.num_classes is not None:
            raise ConfigError("--num-classes applies only with --condition label")
        if self.condition == "label" and (self.mask != "top" or self.mask_seed != 0):
            raise ConfigError("--mask and --mask-seed apply only with --condition mask")


# --- the run config -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """A run's configuration, as stored in ``RUN/config.json``.

    Core sections are attributes (``config.train.lr``); variant sections in use are
    reachable by name too (``config.vae.latent_dim``, ``config.iwae.k``).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        core = {name: getattr(self, name) for name in CORE}
        given = dict(self.variants)
        unknown = set(given) - set(VARIANTS)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {_sections()}")
        out: dict[str, Any] = {}
        for name, spec in VARIANTS.items():
            if spec.active(core):
                out[name] = given.get(name, spec.cls())
            elif name in given and given[name] != spec.cls():
                changed = [
                    f.name for f in fields(spec.cls) if getattr(given[name], f.name) != f.default
                ]
                verb = "applies" if len(changed) == 1 else "apply"
                raise ConfigError(
                    f"{', '.join(_flag(n) for n in changed)} {verb} only with {spec.when()}"
                )
        object.__setattr__(self, "variants", types.MappingProxyType(out))

    def __getattr__(self, name: str) -> Any:
        variants = self.__dict__.get("variants", {})
        if name in variants:
            return variants[name]
        if name in VARIANTS:
            raise ConfigError(
                f"section {name!r} is not in use; it applies with {VARIANTS[name].when()}"
            )
        raise AttributeError(name)

    def sections(self) -> dict[str, Any]:
        """Every section in use, core first: ``{name: dataclass}``."""
        return {**{name: getattr(self, name) for name in CORE}, **self.variants}

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(s) for name, s in self.sections().items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Build from a (possibly partial, possibly aevb 0.1) JSON object; unknown keys fail."""
        if not isinstance(d, dict):
            raise ConfigError(
                "a config must be a JSON object with sections model, data, train, ..."
            )
        version = d.get("config_version", CONFIG_VERSION)
        if type(version) is not int or not 1 <= version <= CONFIG_VERSION:
            raise ConfigError(
                f"config_version {version!r} is not one this aevb reads (1 to {CONFIG_VERSION}); "
                "a newer aevb wrote it: upgrade aevb, or drop the field"
            )
        d = migrate(d)
        unknown = set(d) - set(CORE) - set(VARIANTS) - {"aevb_version", "config_version"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {_sections()}")
        core = {name: from_dict(CORE[name], d.get(name, {})) for name in CORE}
        variants = {name: from_dict(VARIANTS[name].cls, d[name]) for name in VARIANTS if name in d}
        return cls(**core, variants=variants)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config is not valid JSON: {e}") from None
        except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting too deep
            raise ConfigError(f"config is not a usable JSON object: {e}") from None
        return cls.from_dict(d)

    def replace(self, **overrides: Any) -> RunConfig:
        """A copy with flat field overrides (``latent_dim=8``, ``iwae.k=10``) routed to their section.

        Setting ``schedule`` to a preset (``burda``) also sets the preset's batch size,
        epochs and Adam settings, except those given in the same call.
        """
        overrides = dict(overrides)
        if "schedule" in overrides or "train.schedule" in overrides:
            name = overrides.get("schedule", overrides.get("train.schedule"))
            for key, value in SCHEDULE_PRESETS.get(str(name), {}).items():
                if key not in overrides and f"train.{key}" not in overrides:
                    overrides[key] = value
        grouped: dict[str, dict[str, Any]] = {}
        shared: dict[str, Any] = {}  # short names several sections have: placed below
        for key, value in overrides.items():
            if "." not in key and owners_of(key.replace("-", "_")):
                if len(owners_of(key.replace("-", "_"))) > 1:
                    shared[key.replace("-", "_")] = value
                    continue
            section, name = resolve_field(key)
            cls = CORE.get(section) or VARIANTS[section].cls
            grouped.setdefault(section, {})[name] = coerce(cls, name, value)
        core = {name: _replace(getattr(self, name), grouped.get(name, {})) for name in CORE}
        for name, value in shared.items():  # the one section in use that has the field
            section = _section_in_use(name, core)
            cls = CORE.get(section) or VARIANTS[section].cls
            grouped.setdefault(section, {})[name] = coerce(cls, name, value)
        variants = dict(self.variants)
        for name, spec in VARIANTS.items():
            if name in grouped:
                variants[name] = _replace(variants.get(name, spec.cls()), grouped[name])
        return RunConfig(**core, variants=variants)


def _replace(obj: Any, changes: dict[str, Any]) -> Any:
    return dataclasses.replace(obj, **changes) if changes else obj


def _sections() -> list[str]:
    return [*CORE, *VARIANTS]


# Presets named by --schedule: the settings that come with the schedule in its paper.
SCHEDULE_PRESETS: dict[str, dict[str, Any]] = {
    # Burda et al. (2015), section 5: batch 20, Adam(beta1 0.9, beta2 0.999, eps 1e-4),
    # 3^i epochs at 1e-3 * 10^(-i/7) for i = 0..7: 3,280 epochs in all.
    "burda": {"batch_size": 20, "adam_eps": 1e-4, "epochs": 3280, "lr": 1e-3},
}


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """Read a config written by aevb 0.1 (one flat model section) into today's layout.

    0.1 kept ``latent_dim`` and the objective's ``beta``, ``samples`` and ``objective`` in
    the model section; they now live in the ``vae``, ``objective`` and ``elbo`` sections.
    """
    model = d.get("model")
    if not isinstance(model, dict):
        return d
    moves = {"latent_dim": "vae", "beta": "objective", "objective": "objective", "samples": "elbo"}
    if not any(k in model for k in moves):
        return d
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    model = d["model"]
    for key, section in moves.items():
        if key in model:
            d.setdefault(section, {})
            if isinstance(d[section], dict):
                d[section].setdefault(key, model.pop(key))
    return d


# --- fields and flags -----------------------------------------------------------------------
def all_fields() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every field, by its qualified name ``section.field``: ``{qualified: (section, Field)}``."""
    if "all" not in _FIELD_CACHE:
        out: dict[str, tuple[str, dataclasses.Field]] = {}
        for section, cls in [*CORE.items(), *((n, s.cls) for n, s in VARIANTS.items())]:
            for f in fields(cls):
                out[f"{section}.{f.name}"] = (section, f)
        _FIELD_CACHE["all"] = out
    return _FIELD_CACHE["all"]


def short_names() -> dict[str, str]:
    """``{field: qualified}`` for field names that only one section has (their short flag)."""
    if "short" not in _FIELD_CACHE:
        count: dict[str, list[str]] = {}
        for qualified, (_, f) in all_fields().items():
            count.setdefault(f.name, []).append(qualified)
        _FIELD_CACHE["short"] = {n: q[0] for n, q in count.items() if len(q) == 1}
    return _FIELD_CACHE["short"]


def owners_of(name: str) -> list[str]:
    """The qualified names ``section.field`` of every section that has a field ``name``."""
    return [q for q, (_, f) in all_fields().items() if f.name == name]


def _section_in_use(name: str, core: Mapping[str, Any]) -> str:
    """For a field several sections have, the one section that the switches turn on."""
    owners = owners_of(name)
    in_use = [
        q.split(".")[0]
        for q in owners
        if q.split(".")[0] in CORE or VARIANTS[q.split(".")[0]].active(core)
    ]
    if not in_use:
        whens = " or ".join(VARIANTS[q.split(".")[0]].when() for q in owners)
        raise ConfigError(f"{_flag(name)} applies only with {whens}")
    if len(in_use) > 1:
        raise ConfigError(
            f"{_flag(name)} belongs to several sections in use; say which: "
            f"{', '.join(_flag(o) for o in owners)}"
        )
    return in_use[0]


def resolve_field(key: str) -> tuple[str, str]:
    """``latent_dim`` or ``vae.latent_dim`` (or with dashes) -> ``("vae", "latent_dim")``."""
    key = key.replace("-", "_")
    if "." not in key:
        qualified = short_names().get(key)
        if qualified is None:
            owners = [q for q, (_, f) in all_fields().items() if f.name == key]
            if owners:
                raise ConfigError(
                    f"{_flag(key)} is ambiguous; say which: {', '.join(_flag(o) for o in owners)}"
                )
            raise ConfigError(f"unknown option {_flag(key)}; valid options: {valid_flags()}")
        key = qualified
    if key not in all_fields():
        raise ConfigError(f"unknown option {_flag(key)}; valid options: {valid_flags()}")
    section, name = key.split(".", 1)
    return section, name


def valid_flags() -> str:
    """The config flags, comma-separated (short forms where they exist)."""
    short = short_names()
    flags = []
    for qualified, (_, f) in all_fields().items():
        flags.append(_flag(f.name) if short.get(f.name) == qualified else _flag(qualified))
    return ", ".join(flags)


def _resolved_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def coerce(cls: type, name: str, value: Any) -> Any:
    """Convert ``value`` (a JSON value or a command-line string) to the field's type.

    Raises:
        ConfigError: naming the field, the expected type and the bad value.
    """
    tp = _resolved_type(cls, name)
    f = next(f for f in fields(cls) if f.name == name)
    flag = _flag(name)
    try:
        out = _coerce_type(tp, value)
    except IntegerRangeError:
        raise ConfigError(f"{flag} is out of range; give integers below 2**63") from None
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{flag} expects {_type_name(tp)}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{flag} must be one of {list(choices)}, got {out!r}")
    return out


class IntegerRangeError(OverflowError):
    """An integer beyond the 64-bit range."""


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
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        if isinstance(value, str) and value.strip().lower() in ("inf", "-inf", "nan"):
            raise ValueError
        out = int(value)
        if not -(2**63) <= out < 2**63:  # what torch (seeds, sizes) can take
            raise IntegerRangeError
        return out
    if tp is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, (int, float, str)):
            return float(value)
        raise TypeError
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
        hints = [_did_you_mean(k) for k in sorted(unknown)]
        hint = "".join(f"; {h}" for h in hints if h)
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {sorted(unknown)}{hint}; valid fields: {names}"
        )
    return cls(**{k: coerce(cls, k, v) for k, v in d.items()})


def flag(qualified: str) -> str:
    """The flag a user types for ``section.field``: the short form where it is unique."""
    section, name = qualified.split(".", 1)
    return _flag(name) if short_names().get(name) == qualified else _flag(qualified)


def _did_you_mean(key: str) -> str:
    """``did you mean vae.latent_dim (--latent-dim)?`` for a near miss, else ''."""
    import difflib

    table = {q: (s, f.name) for q, (s, f) in all_fields().items()}
    names = [name for _, name in table.values()]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    close = close or [n for n in names if n.startswith(key) or key.startswith(n)][:1]
    if not close:
        return ""
    qualified = next(q for q, (_, name) in table.items() if name == close[0])
    return f"did you mean {qualified} ({flag(qualified)})?"
