"""Built-in datasets that need no network: scikit-learn's digits and synthetic 2-D densities."""

from __future__ import annotations

import math

import torch

from ..config import DataConfig
from .base import Dataset, DatasetInfo, random_splits
from .registry import SPLIT_OPTIONS, register_dataset


@register_dataset(
    "digits",
    "scikit-learn's 8x8 handwritten digits: 1,797 images (1, 8, 8) in [0, 1], labels 0-9; "
    "80/10/10 split from --split-seed; bernoulli",
)
def load_digits(config: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).div_(16.0).view(-1, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    splits, labels = random_splits(
        x, y, config.valid_fraction, config.test_fraction, config.split_seed
    )
    info = DatasetInfo(
        "digits",
        (1, 8, 8),
        (0.0, 1.0),
        True,
        "bernoulli",
        "scikit-learn 8x8 digits scaled from 0..16 to [0, 1]",
        {"scale": 1 / 16, "classes": [str(d) for d in range(10)]},
        num_classes=10,
    )
    return Dataset(info, splits, labels)


def _synthetic(
    name: str,
    x: torch.Tensor,
    config: DataConfig,
    description: str,
    y: torch.Tensor | None = None,
    num_classes: int | None = None,
) -> Dataset:
    splits, labels = random_splits(
        x, y, config.valid_fraction, config.test_fraction, config.split_seed
    )
    lo, hi = float(x.min()), float(x.max())
    info = DatasetInfo(
        name,
        (2,),
        (lo, hi),
        y is not None,
        "gaussian-shared",
        description,
        {"generator": name, "n": len(x), "seed": config.split_seed},
        num_classes,
    )
    return Dataset(info, splits, labels)


@register_dataset(
    "ring",
    "2-D ring made from normal noise, z ~ N(0, I), x = z/10 + z/||z|| (the paper's "
    "'any distribution from normals' argument); --synthetic-size points; gaussian-shared",
    options=("synthetic_size", *SPLIT_OPTIONS),
)
def load_ring(config: DataConfig) -> Dataset:
    g = torch.Generator().manual_seed(config.split_seed)
    z = torch.randn(config.synthetic_size, 2, generator=g)
    x = z / 10 + z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return _synthetic("ring", x, config, "x = z/10 + z/||z||, z ~ N(0, I)")


@register_dataset(
    "moons",
    "2-D two interleaved half-moons (scikit-learn make_moons, noise 0.05), labels 0/1; "
    "gaussian-shared",
    options=("synthetic_size", *SPLIT_OPTIONS),
)
def load_moons(config: DataConfig) -> Dataset:
    from sklearn.datasets import make_moons

    # scikit-learn takes seeds below 2**32 (the same data for every seed that worked before)
    seed = config.split_seed % 2**32
    x, y = make_moons(config.synthetic_size, noise=0.05, random_state=seed)
    return _synthetic(
        "moons",
        torch.tensor(x, dtype=torch.float32),
        config,
        "two moons",
        torch.tensor(y, dtype=torch.int64),
        num_classes=2,
    )


@register_dataset(
    "gaussians",
    "2-D mixture of 8 Gaussians (std 0.1) evenly spaced on the unit circle, labels 0-7; "
    "gaussian-shared",
    options=("synthetic_size", *SPLIT_OPTIONS),
)
def load_gaussians(config: DataConfig) -> Dataset:
    g = torch.Generator().manual_seed(config.split_seed)
    k = torch.randint(0, 8, (config.synthetic_size,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centres = torch.stack([angle.cos(), angle.sin()], dim=1)
    x = centres + 0.1 * torch.randn(config.synthetic_size, 2, generator=g)
    return _synthetic("gaussians", x, config, "8 Gaussians on a circle", k, num_classes=8)
