"""MNIST and its drop-in relatives in the IDX format: ``mnist``, ``fashion-mnist``, ``kmnist``.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian header -- two zero
bytes, a type code (0x08 unsigned byte, ...), the number of dimensions -- then one uint32
per dimension, then the values in C order. Each dataset has four files,
``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in ``DATA_DIR/<name>/``, kept gzipped as
published or decompressed (where the decompressed SHA-256 is pinned: MNIST).

Every dataset: examples ``(1, 28, 28)``, grey levels scaled to [0, 1] (``uint8 / 255``),
labels 0-9; the official 60,000 training and 10,000 test images; the validation split is
a random ``--valid-fraction`` of the official training images drawn with ``--split-seed``
(6,000 by default), the rest is the training split. Suggested decoder: Bernoulli (grey
levels scored by cross-entropy), or binarise with ``--binarize dynamic|threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .base import Dataset, DatasetInfo, holdout_valid
from .download import RemoteFile, data_root, read_verified
from .registry import OFFICIAL_TEST, register_dataset

_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(content: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse an IDX file's (decompressed) bytes into an array of its declared shape.

    Raises:
        DataError: a bad magic number, an unknown type code, or a length that does not
            match the header.
    """
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _IDX_TYPES:
        raise DataError(
            f"{name} is not an IDX file (magic bytes {content[:4].hex() or 'missing'}); "
            "expected 0000 then a type code and a dimension count"
        )
    dtype, ndim = _IDX_TYPES[content[2]], content[3]
    header = 4 + 4 * ndim
    if len(content) < header:
        raise DataError(f"{name} is truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(content) - header != expected:
        raise DataError(
            f"{name} holds {len(content) - header} bytes of data, but its header {dims} needs "
            f"{expected}: the file is truncated or corrupt; delete it and download it again"
        )
    return np.frombuffer(content, dtype=dtype, offset=header).reshape(dims)


@dataclass(frozen=True)
class IdxSource:
    """Where one IDX dataset is published and what it holds."""

    name: str
    folder: str
    urls: tuple[str, ...]  # base URLs, official first
    # file name -> (bytes, sha256 as published [.gz], sha256 of the decompressed file or None)
    files: dict[str, tuple[int, str, str | None]]
    classes: tuple[str, ...]
    citation: str

    def remote(self, stem: str) -> RemoteFile:
        name = stem + ".gz"
        size, sha, content_sha = self.files[name]
        return RemoteFile(name, tuple(u + name for u in self.urls), sha, size, content_sha)


# SHA-256 and sizes of the .gz files: TensorFlow Datasets, tensorflow_datasets/url_checksums/
# {mnist,fashion_mnist,kmnist}.txt. Decompressed MNIST SHA-256: the t10k values are those of
# ../shared/data/README.md; the train values agree across several independent public projects.
MNIST = IdxSource(
    "mnist",
    "mnist",
    ("http://yann.lecun.com/exdb/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    {
        "train-images-idx3-ubyte.gz": (
            9_912_422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        "train-labels-idx1-ubyte.gz": (
            28_881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        "t10k-images-idx3-ubyte.gz": (
            1_648_877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        "t10k-labels-idx1-ubyte.gz": (
            4_542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    },
    tuple(str(d) for d in range(10)),
    "LeCun, Bottou, Bengio & Haffner 1998",
)
FASHION_MNIST = IdxSource(
    "fashion-mnist",
    "fashion_mnist",
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {
        "train-images-idx3-ubyte.gz": (
            26_421_880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            None,
        ),
        "train-labels-idx1-ubyte.gz": (
            29_515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            None,
        ),
        "t10k-images-idx3-ubyte.gz": (
            4_422_102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            None,
        ),
        "t10k-labels-idx1-ubyte.gz": (
            5_148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            None,
        ),
    },
    (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "Xiao, Rasul & Vollgraf 2017",
)
KMNIST = IdxSource(
    "kmnist",
    "kmnist",
    ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    {
        "train-images-idx3-ubyte.gz": (
            18_165_135,
            "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
            None,
        ),
        "train-labels-idx1-ubyte.gz": (
            29_497,
            "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
            None,
        ),
        "t10k-images-idx3-ubyte.gz": (
            3_041_136,
            "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
            None,
        ),
        "t10k-labels-idx1-ubyte.gz": (
            5_120,
            "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
            None,
        ),
    },
    ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "Clanuwat et al. 2018 (Kuzushiji-MNIST)",
)


def read_idx_pair(
    source: IdxSource, folder: Path, part: str
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Images ``[N, 28, 28]`` uint8 and labels ``[N]`` of ``part`` ('train' or 't10k')."""
    stems = (f"{part}-images-idx3-ubyte", f"{part}-labels-idx1-ubyte")
    arrays, hashes = [], {}
    for stem in stems:
        content, hashes[stem] = read_verified(source.remote(stem), folder)
        arrays.append(parse_idx(content, str(folder / stem)))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(
            f"{source.name} {part}: images {images.shape} and labels {labels.shape} do not pair up"
        )
    return images, labels, hashes


def load_idx_dataset(source: IdxSource, config: DataConfig) -> Dataset:
    """Load one IDX dataset: official train (minus a held-out validation part) and test."""
    folder = data_root(config.data_dir) / source.folder
    # The test split first: a folder holding only it (as ../shared/data/mnist) is read,
    # and only then is the missing training split asked for.
    x_test, y_test, h_test = read_idx_pair(source, folder, "t10k")
    x_train, y_train, h_train = read_idx_pair(source, folder, "train")

    def as_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
        return xt, torch.from_numpy(y.astype(np.int64))

    xtr, ytr = as_tensors(x_train, y_train)
    (xtr, ytr), (xva, yva) = holdout_valid(xtr, ytr, config.valid_fraction, config.split_seed)
    xte, yte = as_tensors(x_test, y_test)
    info = DatasetInfo(
        source.name,
        tuple(xtr.shape[1:]),
        (0.0, 1.0),
        True,
        "bernoulli",
        f"{source.citation}: grey levels / 255, labels {', '.join(source.classes)}",
        {
            "scale": 1 / 255,
            "valid": {
                "fraction": config.valid_fraction,
                "seed": config.split_seed,
                "of": "official training split",
            },
            "classes": list(source.classes),
            "sha256": {**h_train, **h_test},
        },
        num_classes=len(source.classes),
    )
    return Dataset(
        info,
        {"train": xtr, "valid": xva, "test": xte},
        {"train": ytr, "valid": yva, "test": yte},  # type: ignore[dict-item]
    )


_DOC = (
    "(1, 28, 28) grey levels in [0, 1], labels 0-9; official 60,000 train (a seeded "
    "--valid-fraction held out for validation) / 10,000 test; bernoulli"
)


@register_dataset("mnist", f"MNIST handwritten digits, IDX: {_DOC}", options=OFFICIAL_TEST)
def load_mnist(config: DataConfig) -> Dataset:
    return load_idx_dataset(MNIST, config)


@register_dataset(
    "fashion-mnist", f"Fashion-MNIST clothing (Zalando), IDX: {_DOC}", options=OFFICIAL_TEST
)
def load_fashion_mnist(config: DataConfig) -> Dataset:
    return load_idx_dataset(FASHION_MNIST, config)


@register_dataset(
    "kmnist", f"Kuzushiji-MNIST cursive Japanese characters, IDX: {_DOC}", options=OFFICIAL_TEST
)
def load_kmnist(config: DataConfig) -> Dataset:
    return load_idx_dataset(KMNIST, config)
