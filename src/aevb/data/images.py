"""User images: ``--dataset FOLDER`` of PNG/JPEG files, decoded with Pillow.

Layout: either images directly in FOLDER (no labels), or one sub-folder per class
(``FOLDER/cat/*.png``, ``FOLDER/dog/*.jpg``, searched recursively), whose sorted names
become labels 0, 1, ... (recorded in ``transform["classes"]``). Hidden files and other
suffixes are ignored; mixing loose images with class folders is an error.

Every image becomes ``(C, H, W)`` float32 in [0, 1] (``uint8 / 255``): C = 1 when every
file is grayscale (modes 1, L, LA, I;16; 16-bit grey keeps its top 8 bits), else C = 3 and
every file is converted to RGB (alpha is dropped). Without ``--image-size`` all images
must share one size; with it, each is resized (bilinear) to H x W. Splits: 80/10/10 from
``--split-seed`` (``--valid-fraction``, ``--test-fraction``). Suggested decoder: Bernoulli
for grayscale, ``gaussian-pixel`` for colour.

Folders whose float32 tensor would exceed ``--memory-budget-mb`` are served from disk by
:class:`~aevb.data.streaming.StreamingDataset` (same batches, read by ``--num-workers``
DataLoader workers); the choice is logged.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from ..config import DataConfig
from ..errors import DataError
from .base import Dataset, DatasetInfo, split_indices
from .streaming import StreamingDataset

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GRAY_MODES = frozenset({"1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N"})

# What Pillow raises for a file it cannot decode; a DecompressionBombError is a header
# declaring more than twice Image.MAX_IMAGE_PIXELS.
UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError)


def _open(path: str | Path) -> Image.Image:
    """``Image.open`` without its multi-line warning for large images (the user's own files)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()


def find_images(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """The image files under ``root`` in a fixed order, with class labels when sorted by folder.

    Returns:
        ``(files, labels or None, class names)``.

    Raises:
        DataError: no images, or loose images beside class folders.
    """
    entries = sorted(root.iterdir())
    loose = [p for p in entries if _is_image(p)]
    by_class = {
        d.name: files
        for d in entries
        if d.is_dir() and not d.name.startswith(".")
        if (files := sorted(f for f in d.rglob("*") if _is_image(f)))
    }
    if loose and by_class:
        raise DataError(
            f"{root} holds both images ({loose[0].name}, ...) and class folders "
            f"({', '.join(by_class)}); move the loose images into a class folder or elsewhere"
        )
    if by_class:
        classes = list(by_class)
        files = [f for c in classes for f in by_class[c]]
        labels = [k for k, c in enumerate(classes) for _ in by_class[c]]
        return files, labels, classes
    if not loose:
        raise DataError(
            f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}), directly or in class folders"
        )
    return loose, None, []


def inspect_images(files: list[Path]) -> tuple[Counter, int]:
    """Sizes ``(H, W)`` (counted) and the channel count (1 if all grayscale, else 3).

    Only the headers are read.
    """
    sizes: Counter = Counter()
    gray = True
    for f in files:
        try:
            with _open(f) as im:
                sizes[(im.height, im.width)] += 1
                gray = gray and im.mode in GRAY_MODES
        except UNREADABLE as e:
            raise DataError(f"cannot read image {f} ({e}); remove or re-save it") from None
    return sizes, 1 if gray else 3


def target_size(image_size: tuple[int, ...], sizes: Counter, root: Path) -> tuple[int, int]:
    """The (H, W) every image is given: ``--image-size``, else the one size they all share."""
    if image_size:
        if len(image_size) == 1:
            image_size = (image_size[0], image_size[0])
        if len(image_size) != 2 or min(image_size) < 1:
            raise DataError(f"--image-size takes H,W or one number, got {image_size}")
        return int(image_size[0]), int(image_size[1])
    if len(sizes) > 1:
        (a, na), (b, nb) = sizes.most_common(2)
        raise DataError(
            f"{root} mixes image sizes ({na} of {a[0]}x{a[1]}, {nb} of {b[0]}x{b[1]}, ... as HxW); "
            f"resize them all with --image-size {a[0]},{a[1]}"
        )
    return next(iter(sizes))


def decode_image(path: str | Path, channels: int, size: tuple[int, int]) -> np.ndarray:
    """One image file as ``[channels, H, W]`` uint8, converted and resized (bilinear)."""
    try:
        with _open(path) as im:
            if im.mode.startswith("I;16"):  # 16-bit grey: keep the top 8 bits
                im = Image.fromarray((np.asarray(im, dtype=np.uint16) >> 8).astype(np.uint8))
            im = im.convert("L" if channels == 1 else "RGB")
            if (im.height, im.width) != size:
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.array(im, dtype=np.uint8)  # a writable copy
    except UNREADABLE as e:
        raise DataError(f"cannot read image {path} ({e}); remove or re-save it") from None
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


class ImageFiles(TorchDataset):
    """Map-style dataset of image files: item i is ``[C, H, W]`` float32 in [0, 1]."""

    def __init__(self, files: list[Path], channels: int, size: tuple[int, int]):
        self.files = [str(f) for f in files]
        self.channels = channels
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        a = decode_image(self.files[i], self.channels, self.size)
        return torch.from_numpy(a).float().div_(255.0)


def load_image_folder(path: Path, config: DataConfig) -> Dataset:
    """A folder of images as a dataset (in memory, or from disk above the memory budget)."""
    files, labels, classes = find_images(path)
    sizes, channels = inspect_images(files)
    h, w = target_size(tuple(config.image_size), sizes, path)
    n = len(files)
    parts = split_indices(n, config.valid_fraction, config.test_fraction, config.split_seed)
    y = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
    split_labels = {s: y[i] for s, i in parts.items()} if y is not None else None
    nbytes = n * channels * h * w * 4
    on_disk = nbytes > config.memory_budget_mb * 2**20
    info = DatasetInfo(
        str(path),
        (channels, h, w),
        (0.0, 1.0),
        labels is not None,
        "bernoulli" if channels == 1 else "gaussian-pixel",
        f"{n} images from {path}{' (read from disk)' if on_disk else ''}",
        {
            "kind": "image_folder",
            "size": [h, w],
            "channels": channels,
            "resized": sorted(sizes) != [(h, w)],
            "scale": 1 / 255,
            "classes": classes,
            "split_seed": config.split_seed,
        },
        len(classes) if labels is not None else None,
    )
    if on_disk:
        logger.warning(
            "%s: %d images need %.0f MiB as float32, over --memory-budget-mb %d; reading them "
            "from disk with %d DataLoader workers (--num-workers)",
            path,
            n,
            nbytes / 2**20,
            config.memory_budget_mb,
            config.num_workers,
        )
        sources = {
            s: ImageFiles([files[i] for i in idx.tolist()], channels, (h, w))
            for s, idx in parts.items()
        }
        return StreamingDataset(info, sources, split_labels, config.num_workers)
    arr = np.empty((n, channels, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        arr[i] = decode_image(f, channels, (h, w))
    x = torch.from_numpy(arr).float().div_(255.0)
    return Dataset(info, {s: x[i] for s, i in parts.items()}, split_labels)
