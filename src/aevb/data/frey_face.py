"""Frey Face: the continuous dataset of the original VAE paper (Kingma & Welling 2014, sec. 5).

1,965 grayscale 28x20 frames of Brendan Frey's face from a video, published by Sam Roweis
as ``frey_rawface.mat`` (MATLAB; variable ``ff``, 560 x 1965 uint8, one column per image,
each column a 28x20 image in row-major order). Read through ``scipy.io.loadmat`` (no
pickle). Examples ``(1, 28, 20)``, values ``uint8 / 255`` in [0, 1], no labels, split
80/10/10 (``--valid-fraction``/``--test-fraction``) from ``--split-seed``. Suggested
decoder: ``gaussian-decoded`` (mean and standard deviation from the decoder, as in the paper).

No checksum of this file is published, so none is pinned: the file is accepted when its
structure is exactly right (``ff`` is uint8 of shape 560 x 1965), and its SHA-256 is
logged and recorded in the run's ``config.json`` (``dataset_info.transform.sha256``).
"""

from __future__ import annotations

import io

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .base import Dataset, DatasetInfo, random_splits
from .download import RemoteFile, data_root, read_verified
from .registry import SPLIT_OPTIONS, register_dataset

FOLDER = "frey_face"
FILE = RemoteFile("frey_rawface.mat", ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",), None)
HEIGHT, WIDTH, COUNT = 28, 20, 1965


def parse_frey(content: bytes, name: str = FILE.name) -> np.ndarray:
    """The faces of a ``frey_rawface.mat`` as ``[N, 28, 20]`` uint8.

    Raises:
        DataError: not a MATLAB file, no variable ``ff``, or the wrong shape or type.
    """
    import scipy.io  # here, not at module import: it costs 0.1 s of every aevb start

    try:
        mat = scipy.io.loadmat(io.BytesIO(content))
    except (ValueError, TypeError, OSError, NotImplementedError) as e:
        raise DataError(
            f"{name} is not a readable MATLAB file ({e}); delete it and download it again"
        ) from None
    ff = mat.get("ff")
    ok = isinstance(ff, np.ndarray) and ff.dtype == np.uint8 and ff.ndim == 2
    if not ok or ff.shape[0] != HEIGHT * WIDTH:
        got = f"{ff.dtype} {ff.shape}" if isinstance(ff, np.ndarray) else "no such variable"
        raise DataError(
            f"{name}: expected a variable 'ff' of uint8, shape 560 x N (28x20 faces), got {got}; "
            "it is not the Frey Face file"
        )
    return np.ascontiguousarray(ff.T).reshape(-1, HEIGHT, WIDTH)


@register_dataset(
    "frey-face",
    "Frey Face video frames (the VAE paper's continuous data): 1,965 images (1, 28, 20) in [0, 1], "
    "no labels; 80/10/10 split from --split-seed; gaussian-decoded",
    options=("data_dir", *SPLIT_OPTIONS),
)
def load_frey_face(config: DataConfig) -> Dataset:
    folder = data_root(config.data_dir) / FOLDER
    content, sha = read_verified(FILE, folder)
    faces = parse_frey(content, str(folder / FILE.name))
    if len(faces) != COUNT:
        raise DataError(
            f"{folder / FILE.name} holds {len(faces)} faces, expected {COUNT}; "
            "it is not the official file"
        )
    x = torch.from_numpy(faces.astype(np.float32) / 255.0).unsqueeze(1)
    splits, _ = random_splits(
        x, None, config.valid_fraction, config.test_fraction, config.split_seed
    )
    info = DatasetInfo(
        "frey-face",
        (1, HEIGHT, WIDTH),
        (0.0, 1.0),
        False,
        "gaussian-decoded",
        "Frey Face (Roweis's frey_rawface.mat), grey levels / 255",
        {"scale": 1 / 255, "sha256": sha, "split_seed": config.split_seed},
    )
    return Dataset(info, splits)
