"""CIFAR-10 from its official *binary* version (never the Python-pickle one).

A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, 2009.
``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and
``test_batch.bin``: fixed-size 3,073-byte records, one label byte (0-9) then 3,072 pixel
bytes (the red, green and blue 32x32 planes, each row-major). The records are read with
NumPy straight from the archive (``tarfile``; nothing is extracted to disk).

Examples ``(3, 32, 32)`` in [0, 1] (``uint8 / 255``), labels 0-9 (airplane ... truck);
official 50,000 train / 10,000 test; the validation split is a random ``--valid-fraction``
of the training images drawn with ``--split-seed``. Suggested decoder: ``gaussian-pixel``.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .base import Dataset, DatasetInfo, holdout_valid
from .download import RemoteFile, data_root, fetch
from .registry import OFFICIAL_TEST, register_dataset

FOLDER = "cifar10"
# SHA-256 and size: TensorFlow Datasets, tensorflow_datasets/url_checksums/cifar10.txt.
FILE = RemoteFile(
    "cifar-10-binary.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    170_052_171,
)
RECORD = 1 + 3 * 32 * 32
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def parse_records(content: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary records -> images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` int64.

    Raises:
        DataError: a length that is not a whole number of records, or a label above 9.
    """
    if len(content) == 0 or len(content) % RECORD:
        raise DataError(
            f"{name}: {len(content)} bytes is not a whole number of {RECORD}-byte CIFAR-10 records"
        )
    rec = np.frombuffer(content, dtype=np.uint8).reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if (labels > 9).any():
        raise DataError(f"{name}: labels must be 0-9; the file is not CIFAR-10 binary data")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def read_archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every batch of the archive by its file name (members are matched by base name)."""
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar.getmembers():
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in (*TRAIN_BATCHES, TEST_BATCH):
                    f = tar.extractfile(member)
                    assert f is not None
                    out[base] = parse_records(f.read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(
            f"{path} is not a readable tar.gz archive ({e}); delete it and download it again"
        ) from None
    missing = [b for b in (*TRAIN_BATCHES, TEST_BATCH) if b not in out]
    if missing:
        raise DataError(f"{path} lacks {missing}; it is not the CIFAR-10 binary archive")
    return out


@register_dataset(
    "cifar10",
    "CIFAR-10 (official binary version): (3, 32, 32) in [0, 1], labels 0-9; official 50,000 train "
    "(a seeded --valid-fraction held out for validation) / 10,000 test; gaussian-pixel",
    options=OFFICIAL_TEST,
)
def load_cifar10(config: DataConfig) -> Dataset:
    folder = data_root(config.data_dir) / FOLDER
    path = fetch(FILE, folder)
    batches = read_archive(path)

    def as_tensors(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x).float().div_(255.0), torch.from_numpy(y)

    xtr, ytr = as_tensors([batches[b] for b in TRAIN_BATCHES])
    (xtr, ytr), (xva, yva) = holdout_valid(xtr, ytr, config.valid_fraction, config.split_seed)
    xte, yte = as_tensors([batches[TEST_BATCH]])
    info = DatasetInfo(
        "cifar10",
        (3, 32, 32),
        (0.0, 1.0),
        True,
        "gaussian-pixel",
        "CIFAR-10 (Krizhevsky 2009), binary version, RGB / 255",
        {
            "scale": 1 / 255,
            "valid": {
                "fraction": config.valid_fraction,
                "seed": config.split_seed,
                "of": "official training split",
            },
            "classes": list(CLASSES),
            "sha256": FILE.sha256,
        },
        num_classes=len(CLASSES),
    )
    return Dataset(
        info,
        {"train": xtr, "valid": xva, "test": xte},
        {"train": ytr, "valid": yva, "test": yte},  # type: ignore[dict-item]
    )
