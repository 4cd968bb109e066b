"""Named datasets, parsed from small files written in their genuine formats, and --binarize.

Each loader reads files the test writes in the official format (``.amat`` text, gzipped IDX
with its magic numbers, a MATLAB file with ``ff``, CIFAR-10 binary records in a tar.gz)
into a temporary ``--data-dir``, with the pinned checksums swapped for those of the test
files; pixel values, labels, split sizes and checksum errors are checked exactly. The real
files in ../shared/data (binarized MNIST, the MNIST test split) are read when present.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from aevb.cli import main
from aevb.config import DataConfig
from aevb.data import DATASETS, load_dataset
from aevb.data import binarized_mnist as bm
from aevb.data import cifar10 as cf
from aevb.data import frey_face as ff
from aevb.data import idx as idx_mod
from aevb.data.base import Dataset
from aevb.data.binarize import fixed_uniforms
from aevb.data.download import RemoteFile
from aevb.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def dead_base() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def link_shared(tmp_path: Path, folder: str) -> Path:
    """A --data-dir whose ``folder/`` holds symlinks to the shared files (never written to)."""
    src = SHARED / folder
    if not src.is_dir():
        pytest.skip(f"{src} is not available")
    dst = tmp_path / folder
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).symlink_to(f)
    return tmp_path


def test_every_named_dataset_is_registered_and_listed(capsys):
    names = {
        "digits",
        "ring",
        "moons",
        "gaussians",
        "binarized-mnist",
        "mnist",
        "fashion-mnist",
        "kmnist",
        "frey-face",
        "cifar10",
    }
    assert names <= set(DATASETS)
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert all(f"{n} " in out for n in names)


# --- binarized MNIST ------------------------------------------------------------------
def amat(bits: np.ndarray) -> bytes:
    """The .amat text of ``[N, 784]`` bits: digits separated by single spaces, one line each."""
    return b"".join(b" ".join(b"%d" % v for v in row) + b"\n" for row in bits)


@pytest.fixture
def small_binarized(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    bits = {
        s: (rng.random((n, 784)) < 0.3).astype(np.uint8)
        for s, n in (("train", 6), ("valid", 3), ("test", 2))
    }
    folder = tmp_path / "binarized_mnist"
    folder.mkdir()
    files = {}
    for s, b in bits.items():
        text = amat(b)
        name = f"binarized_mnist_{s}.amat"
        if s == "valid":  # one split kept gzipped, as in ../shared/data
            (folder / (name + ".gz")).write_bytes(gzip.compress(text))
        else:
            (folder / name).write_bytes(text)
        files[s] = RemoteFile(name, (dead_base() + name,), sha(text), len(text))
    monkeypatch.setattr(bm, "FILES", files)
    monkeypatch.setattr(bm, "SIZES", {s: len(b) for s, b in bits.items()})
    return tmp_path, bits


def test_binarized_mnist_reads_plain_and_gzipped_amat(small_binarized):
    data_dir, bits = small_binarized
    ds = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(data_dir)))
    for s, b in bits.items():
        assert torch.equal(ds.tensor(s), torch.from_numpy(b).float().view(-1, 1, 28, 28))
    assert ds.info.shape == (1, 28, 28) and ds.info.likelihood == "bernoulli"
    assert ds.labels("train") is None and not ds.info.has_labels


def test_binarized_mnist_held_as_uint8_hands_out_the_same_float32_batches(small_binarized):
    """The splits stay uint8 in memory (a quarter of it, no float32 copy to touch); every
    batch, head and tensor is float32 and equal, bit for bit, to a float32-held copy's."""
    data_dir, bits = small_binarized
    ds = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(data_dir)))
    assert all(ds.splits[s].dtype == torch.uint8 for s in bits)
    as_float = Dataset(ds.info, {s: ds.splits[s].float() for s in bits})

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.dtype == b.dtype == torch.float32 and torch.equal(a, b)

    for a, b in zip(ds.train_batches(4, 0, 1), as_float.train_batches(4, 0, 1), strict=True):
        assert same(a[0], b[0])
    for a, b in zip(ds.eval_batches("valid", 2), as_float.eval_batches("valid", 2), strict=True):
        assert same(a[0], b[0])
    assert same(ds.head("test", 1), as_float.head("test", 1))
    assert same(ds.tensor("train"), as_float.tensor("train"))


def test_binarized_mnist_checksum_mismatch(small_binarized):
    data_dir, bits = small_binarized
    path = data_dir / "binarized_mnist" / "binarized_mnist_test.amat"
    flipped = bits["test"].copy()
    flipped[0, 0] ^= 1
    path.write_bytes(amat(flipped))  # a well-formed file, one pixel off
    with pytest.raises(DataError, match="binarized_mnist_test.amat fails its checksum"):
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(data_dir)))


def test_amat_parser_rejects_malformed_text():
    good = amat(np.zeros((2, 784), dtype=np.uint8))
    assert bm.parse_amat(good).shape == (2, 784)
    with pytest.raises(DataError, match="whole number"):
        bm.parse_amat(good[:-1])
    with pytest.raises(DataError, match="characters 0 or 1"):
        bm.parse_amat(good.replace(b"0", b"2", 1))
    with pytest.raises(DataError, match="single spaces"):
        bm.parse_amat(good.replace(b" ", b",", 1))


def test_binarized_mnist_real_files(tmp_path):
    data_dir = link_shared(tmp_path, "binarized_mnist")
    ds = load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(data_dir)))
    assert {s: ds.size(s) for s in ("train", "valid", "test")} == bm.SIZES
    x = ds.tensor("test")
    assert x.shape == (10_000, 1, 28, 28)
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert 0.10 < float(ds.tensor("train").mean()) < 0.16  # MNIST has ~13% ink
    # The decompressed bytes are the official files: their SHA-256 is the pinned one.
    assert ds.info.transform["sha256"] == {s: bm.FILES[s].sha256 for s in bm.FILES}


def test_binarized_mnist_real_file_corrupted(tmp_path):
    data_dir = link_shared(tmp_path, "binarized_mnist")
    folder = data_dir / "binarized_mnist"
    path = folder / "binarized_mnist_valid.amat.gz"
    text = gzip.decompress(path.read_bytes())
    path.unlink()  # replace the symlink, never the shared file
    path.write_bytes(gzip.compress(text[: len(text) - 1568], compresslevel=1))  # last line gone
    with pytest.raises(DataError, match=r"valid\.amat\.gz fails its checksum.*decompressed"):
        load_dataset(DataConfig(dataset="binarized-mnist", data_dir=str(data_dir)))


# --- IDX: mnist, fashion-mnist, kmnist ------------------------------------------------
def idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def test_idx_parser_magic_and_length():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(a)
    assert raw[:4] == b"\x00\x00\x08\x03"  # the images' magic number 2051
    assert np.array_equal(idx_mod.parse_idx(raw), a)
    labels = idx_bytes(np.array([3, 1, 4], dtype=np.uint8))
    assert labels[:4] == b"\x00\x00\x08\x01"  # the labels' magic number 2049
    assert idx_mod.parse_idx(labels).tolist() == [3, 1, 4]
    with pytest.raises(DataError, match="not an IDX file"):
        idx_mod.parse_idx(b"\x1f\x8b" + raw[2:])  # e.g. a gzip read as IDX
    with pytest.raises(DataError, match="truncated or corrupt"):
        idx_mod.parse_idx(raw[:-1])


@pytest.mark.parametrize("name,attr", [("fashion-mnist", "FASHION_MNIST"), ("kmnist", "KMNIST")])
def test_idx_datasets_from_gzipped_files(tmp_path, monkeypatch, name, attr):
    rng = np.random.default_rng(1)
    source = getattr(idx_mod, attr)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 0, 3, 3, 7], dtype=np.uint8),
    }
    folder = tmp_path / source.folder
    folder.mkdir()
    files = {}
    for stem, a in arrays.items():
        gz = gzip.compress(idx_bytes(a))
        (folder / f"{stem}.gz").write_bytes(gz)
        files[f"{stem}.gz"] = (len(gz), sha(gz), None)
    fake = dataclasses.replace(source, urls=(dead_base(),), files=files)
    monkeypatch.setattr(idx_mod, attr, fake)
    ds = load_dataset(DataConfig(dataset=name, data_dir=str(tmp_path), valid_fraction=0.25))
    assert (ds.size("train"), ds.size("valid"), ds.size("test")) == (15, 5, 5)
    x = ds.tensor("test")
    assert torch.equal(
        (x * 255).round().to(torch.uint8).squeeze(1),
        torch.from_numpy(arrays["t10k-images-idx3-ubyte"]),
    )
    assert ds.labels("test").tolist() == [9, 0, 3, 3, 7]
    assert ds.info.transform["classes"] == list(source.classes)
    assert sorted(ds.labels("train").tolist() + ds.labels("valid").tolist()) == sorted(
        arrays["train-labels-idx1-ubyte"].tolist()
    )
    # The split is a function of --split-seed alone.
    again = load_dataset(DataConfig(dataset=name, data_dir=str(tmp_path), valid_fraction=0.25))
    assert torch.equal(again.tensor("valid"), ds.tensor("valid"))


def test_mnist_real_test_split(tmp_path):
    data_dir = link_shared(tmp_path, "mnist")
    folder = data_dir / "mnist"
    x, y, hashes = idx_mod.read_idx_pair(idx_mod.MNIST, folder, "t10k")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test digits
    assert np.bincount(y).tolist()[:3] == [980, 1135, 1032]
    # the values in ../shared/data/README.md
    assert hashes == {
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    }


def test_mnist_with_only_the_test_split_asks_for_the_training_files(tmp_path, monkeypatch):
    data_dir = link_shared(tmp_path, "mnist")
    base = dead_base()
    monkeypatch.setattr(idx_mod, "MNIST", dataclasses.replace(idx_mod.MNIST, urls=(base,)))
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset="mnist", data_dir=str(data_dir)))
    target = data_dir / "mnist" / "train-images-idx3-ubyte.gz"
    want = f"Fetch {base}train-images-idx3-ubyte.gz yourself and save it as {target}"
    assert want in str(e.value)
    assert sorted(p.name for p in (data_dir / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]


# --- Frey Face -------------------------------------------------------------------------
def test_frey_face_from_matlab_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    faces = rng.integers(0, 256, (ff.COUNT, 28, 20), dtype=np.uint8)
    folder = tmp_path / "frey_face"
    folder.mkdir()
    path = folder / "frey_rawface.mat"
    # As published: 560 x N, one column per face, each column a row-major 28x20 image.
    scipy.io.savemat(path, {"ff": faces.reshape(ff.COUNT, 560).T}, format="5")
    monkeypatch.setattr(ff, "FILE", dataclasses.replace(ff.FILE, urls=(dead_base(),)))
    ds = load_dataset(DataConfig(dataset="frey-face", data_dir=str(tmp_path)))
    sizes = [ds.size(s) for s in ("train", "valid", "test")]
    assert sum(sizes) == ff.COUNT and sizes[1] == sizes[2] == round(0.1 * ff.COUNT)
    assert ds.info.shape == (1, 28, 20) and ds.info.likelihood == "gaussian-decoded"
    got = torch.cat([ds.tensor(s) for s in ("train", "valid", "test")])
    got = (got * 255).round().to(torch.uint8).squeeze(1)
    want = torch.from_numpy(faces)
    assert torch.equal(torch.unique(got, dim=0), torch.unique(want, dim=0))
    assert ds.info.transform["sha256"] == sha(path.read_bytes())  # no published checksum: recorded


def test_frey_face_wrong_variable(tmp_path):
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"faces": np.zeros((560, 3), dtype=np.uint8)})
    with pytest.raises(DataError, match="variable 'ff'"):
        ff.parse_frey(buf.getvalue())
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        ff.parse_frey(b"not a mat file at all" * 10)


# --- CIFAR-10 (binary version) -----------------------------------------------------------
def cifar_archive(rng: np.random.Generator, per_batch: int) -> tuple[bytes, dict[str, np.ndarray]]:
    records = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (*cf.TRAIN_BATCHES, cf.TEST_BATCH, "batches.meta.txt"):
            if name.endswith(".bin"):
                rec = rng.integers(0, 256, (per_batch, cf.RECORD), dtype=np.uint8)
                rec[:, 0] %= 10
                records[name] = rec
                data = rec.tobytes()
            else:
                data = "\n".join(cf.CLASSES).encode()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), records


def test_cifar10_binary_records(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    archive, records = cifar_archive(rng, 4)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / cf.FILE.name).write_bytes(archive)
    monkeypatch.setattr(
        cf,
        "FILE",
        dataclasses.replace(cf.FILE, urls=(dead_base(),), sha256=sha(archive), size=len(archive)),
    )
    ds = load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path), valid_fraction=0.25))
    assert (ds.size("train"), ds.size("valid"), ds.size("test")) == (15, 5, 4)
    rec = records[cf.TEST_BATCH]
    x = ds.tensor("test")
    assert x.shape == (4, 3, 32, 32)
    # Record layout: label, then the red, green and blue 32x32 planes, each row-major.
    for c, i, j in ((0, 0, 0), (1, 5, 7), (2, 31, 30)):
        assert x[2, c, i, j] * 255 == pytest.approx(float(rec[2, 1 + c * 1024 + i * 32 + j]))
    assert ds.labels("test").tolist() == rec[:, 0].tolist()
    assert ds.info.likelihood == "gaussian-pixel" and ds.info.transform["classes"][0] == "airplane"


def test_cifar10_checksum_and_record_errors(tmp_path, monkeypatch):
    archive, _ = cifar_archive(np.random.default_rng(4), 2)
    folder = tmp_path / "cifar10"
    folder.mkdir()
    (folder / cf.FILE.name).write_bytes(archive)
    monkeypatch.setattr(cf, "FILE", dataclasses.replace(cf.FILE, urls=(dead_base(),)))
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz fails its checksum"):
        load_dataset(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="3073-byte CIFAR-10 records"):
        cf.parse_records(b"\x00" * 3074, "batch")


# --- --binarize --------------------------------------------------------------------------
def test_threshold_binarize_is_x_over_half():
    grey = load_dataset(DataConfig(dataset="digits"))
    ds = load_dataset(DataConfig(dataset="digits", binarize="threshold"))
    for s in ("train", "valid", "test"):
        assert torch.equal(ds.tensor(s), (grey.tensor(s) > 0.5).float())
        assert torch.equal(ds.labels(s), grey.labels(s))
    assert ds.info.likelihood == "bernoulli" and ds.info.transform["binarize"] == "threshold"


def test_dynamic_binarize_redraws_training_pixels_from_the_global_rng():
    grey = load_dataset(DataConfig(dataset="digits"))
    ds = load_dataset(DataConfig(dataset="digits", binarize="dynamic"))
    assert torch.equal(ds.tensor("train"), grey.tensor("train"))  # kept grey, drawn per use
    torch.manual_seed(0)
    first = [x for x, _ in ds.train_batches(64, seed=1, epoch=0)]
    torch.manual_seed(0)
    again = [x for x, _ in ds.train_batches(64, seed=1, epoch=0)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # resumable
    redraw = [x for x, _ in ds.train_batches(64, seed=1, epoch=0)]  # same examples, fresh pixels
    assert not all(torch.equal(a, b) for a, b in zip(first, redraw, strict=True))
    assert set(torch.cat(first).unique().tolist()) == {0.0, 1.0}
    # E[b] = x: the average of many draws of one batch approaches its grey levels.
    grey_batch, _ = next(grey.train_batches(64, seed=1, epoch=0))
    torch.manual_seed(1)
    draws = [next(ds.train_batches(64, seed=1, epoch=0))[0] for _ in range(400)]
    mean = torch.stack(draws).mean(0)
    assert (mean - grey_batch).abs().max() < 0.1
    # valid/test are drawn once, reproducibly, and independently of the global RNG
    other = load_dataset(DataConfig(dataset="digits", binarize="dynamic"))
    assert torch.equal(ds.tensor("test"), other.tensor("test"))
    assert set(ds.tensor("test").unique().tolist()) == {0.0, 1.0}
    assert abs(float(ds.tensor("test").mean()) - float(grey.tensor("test").mean())) < 0.02
    assert ds.info.transform["binarize"] == "dynamic"


def test_fixed_uniforms_depend_only_on_example_and_pixel():
    u = fixed_uniforms(7, torch.arange(10), 50)
    assert u.shape == (10, 50) and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(fixed_uniforms(7, torch.tensor([3, 8]), 50), u[[3, 8]])
    assert not torch.equal(fixed_uniforms(8, torch.arange(10), 50), u)
    big = fixed_uniforms(0, torch.arange(2000), 100)
    assert abs(float(big.mean()) - 0.5) < 0.005 and abs(float(big.var()) - 1 / 12) < 0.002


def test_binarize_refuses_data_outside_unit_interval():
    with pytest.raises(DataError, match="needs values in \\[0, 1\\]"):
        load_dataset(DataConfig(dataset="ring", binarize="dynamic"))


def test_dynamic_binarization_resumes_bit_exactly(tmp_path, capsys):
    from safetensors.torch import load_file

    common = [
        "--dataset",
        "digits",
        "--binarize",
        "dynamic",
        "--hidden",
        "16",
        "--batch-size",
        "64",
        "--no-progress",
        "--figures",
        "false",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *common, "--steps", "6", "--out", str(straight)]) == 0
    assert main(["train", *common, "--steps", "3", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--steps", "6", "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    a = load_file(straight / "model.safetensors")
    b = load_file(split / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
