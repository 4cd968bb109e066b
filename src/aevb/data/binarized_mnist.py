"""Statically binarized MNIST (Larochelle & Murray 2011), the standard VAE likelihood benchmark.

H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator", AISTATS 2011
(the binarisation of Salakhutdinov & Murray 2008, fixed once and published).

Files: ``binarized_mnist_{train,valid,test}.amat`` (or ``.amat.gz``) in
``DATA_DIR/binarized_mnist/``: one example per line, 784 characters ``0``/``1`` separated by
single spaces, then ``\\n`` (1,568 bytes a line). Official splits 50,000 / 10,000 / 10,000,
no labels. Examples ``(1, 28, 28)`` with values in {0, 1}; Bernoulli decoder.

The three files are verified and parsed once, into ``binarized_mnist.cache.npy`` (the
pixels bit-packed, 7 MB) beside them (see :mod:`aevb.data.cache`); later loads check and
read that instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .base import SPLITS, Dataset, DatasetInfo
from .cache import cached_array
from .download import RemoteFile, data_root, read_verified
from .registry import register_dataset

FOLDER = "binarized_mnist"
BASE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
PIXELS = 784
LINE = 2 * PIXELS  # 784 digits, 783 spaces, one newline

# SHA-256 of the uncompressed official files, as pinned by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/binarized_mnist.txt).
FILES = {
    "train": RemoteFile(
        "binarized_mnist_train.amat",
        (BASE_URL + "binarized_mnist_train.amat",),
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
        78_400_000,
    ),
    "valid": RemoteFile(
        "binarized_mnist_valid.amat",
        (BASE_URL + "binarized_mnist_valid.amat",),
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
        15_680_000,
    ),
    "test": RemoteFile(
        "binarized_mnist_test.amat",
        (BASE_URL + "binarized_mnist_test.amat",),
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
        15_680_000,
    ),
}
SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}


def parse_amat(content: bytes, name: str = "amat") -> np.ndarray:
    """Parse a binarized-MNIST ``.amat`` text into ``[N, 784]`` uint8 in {0, 1}.

    Vectorised: the bytes are viewed as an ``[N, 1568]`` array whose even columns are the
    digits and whose odd columns are the separators.

    Raises:
        DataError: a length or a character that does not fit the format.
    """
    buf = np.frombuffer(content, dtype=np.uint8)
    if len(buf) == 0 or len(buf) % LINE:
        raise DataError(
            f"{name} is not a binarized-MNIST .amat file: {len(buf)} bytes is not a whole number "
            f"of {LINE}-byte lines"
        )
    rows = buf.reshape(-1, LINE)
    seps = rows[:, 1::2]
    if not ((seps[:, :-1] == ord(" ")).all() and (seps[:, -1] == ord("\n")).all()):
        raise DataError(f"{name}: lines must be 784 digits separated by single spaces")
    digits = rows[:, 0::2] - np.uint8(ord("0"))
    if (digits > 1).any():
        raise DataError(f"{name}: pixels must be the characters 0 or 1")
    return digits


@register_dataset(
    "binarized-mnist",
    "statically binarized MNIST (Larochelle & Murray 2011): (1, 28, 28) in {0, 1}, no labels, "
    "official 50,000/10,000/10,000 splits; bernoulli",
    options=("data_dir",),
)
def load_binarized_mnist(config: DataConfig) -> Dataset:
    """The three official splits as ``[N, 1, 28, 28]`` tensors of 0s and 1s (held as uint8,
    handed out as float32)."""
    folder = data_root(config.data_dir) / FOLDER
    packed, extra = cached_array(
        folder,
        "binarized_mnist",
        "packbits-784",
        lambda: [_present(FILES[s], folder) for s in SPLITS],
        lambda: _verify_and_parse(folder),
    )
    bits = np.unpackbits(packed, axis=1, count=PIXELS)  # [70000, 784] uint8
    splits, start = {}, 0
    for s in SPLITS:
        splits[s] = torch.from_numpy(bits[start : start + SIZES[s]]).view(-1, 1, 28, 28)
        start += SIZES[s]
    info = DatasetInfo(
        "binarized-mnist",
        (1, 28, 28),
        (0.0, 1.0),
        False,
        "bernoulli",
        "statically binarized MNIST (Larochelle & Murray 2011)",
        {"source": "binarized_mnist_{train,valid,test}.amat", "sha256": extra["sha256"]},
    )
    return Dataset(info, splits)


def _present(remote: RemoteFile, folder: Path):
    """The copy of ``remote`` the loader reads (the preferred of its names), or None."""
    return next((folder / n for n in remote.variants() if (folder / n).is_file()), None)


def _verify_and_parse(folder: Path) -> tuple[np.ndarray, list[Path], dict]:
    """Download what is missing, verify and parse the three files: packed bits ``[70000, 98]``."""
    parts, paths, hashes = [], [], {}
    for s in SPLITS:
        content, hashes[s] = read_verified(FILES[s], folder)
        path = _present(FILES[s], folder)
        x = parse_amat(content, str(path))
        if len(x) != SIZES[s]:
            raise DataError(f"binarized-MNIST {s} split has {len(x)} examples, expected {SIZES[s]}")
        parts.append(np.packbits(x, axis=1))
        paths.append(path)
    return np.concatenate(parts), paths, {"sha256": hashes}
