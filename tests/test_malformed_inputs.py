"""Malformed input of every kind, in one table: each case is a hostile user's command line.

The promise (README): a user error is one line on stderr (``aevb <command>: error: ...``),
a non-zero exit status, no traceback, and nothing on disk changed -- no file rewritten, no
half-written file or empty folder left behind. Each case builds its inputs (data files,
config files, a damaged copy of one small trained run) in its own folder, which is also
the working directory, runs the CLI in-process, and compares every file and folder under
that folder, byte for byte, before and after.

A few inputs are odd rather than wrong (a metrics log with garbage lines must still be
readable): those cases (``ok=True``) may also succeed, but never with a traceback or a
changed file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image
from safetensors.torch import load_file, save_file

from aevb import checkpoint as ckpt

# A train command that would finish in a second on good data: each case breaks one input.
TRAIN = ["train", "--hidden", "8", "--steps", "2", "--batch-size", "8", "--figures", "false"]
TRAIN += ["--no-progress"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Small finished runs, on digits and on a CSV table; each case damages its own copy."""
    root = tmp_path_factory.mktemp("malformed")
    (root / "table.csv").write_text(CSV)
    runs = {}
    for name, data, batch in (("digits", "digits", 64), ("csv", root / "table.csv", 8)):
        runs[name] = root / name
        argv = ["--hidden", "32", "--steps", "20", "--batch-size", batch, "--dataset", data]
        res = run_cli("train", *argv, "--no-progress", "--figures", "false", "--out", runs[name])
        assert res.code == 0, res.err
    return runs


class Inputs:
    """A case's folder, and builders of malformed inputs and command lines in it."""

    def __init__(self, root: Path, trained: dict[str, Path]):
        self.root = root
        self.trained = trained
        self.env: dict[str, str] = {}  # environment variables the case sets

    def setenv(self, name: str, value: str) -> Inputs:
        self.env[name] = value
        return self

    # --- files -------------------------------------------------------------------------
    def file(self, name: str, content: bytes | str = b"") -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def npy(self, array: np.ndarray, name: str = "data.npy") -> Path:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=array.dtype == object)
        return self.file(name, buf.getvalue())

    def npz(self, name: str = "data.npz", compressed: bool = False, **arrays) -> Path:
        buf = io.BytesIO()
        (np.savez_compressed if compressed else np.savez)(buf, **arrays)
        return self.file(name, buf.getvalue())

    def zip(self, members: dict[str, bytes], name: str = "data.npz") -> Path:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for member, content in members.items():
                z.writestr(member, content)
        return self.file(name, buf.getvalue())

    def csv(self, text: str | bytes, name: str = "table.csv") -> Path:
        return self.file(name, text)

    def config(self, text: str | bytes) -> Path:
        return self.file("config.json", text)

    def png(self, name: str, array: np.ndarray) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="PNG")
        return path

    def images(self, n: int = 20, size=(8, 8), folder: str = "images", cut: int = 0) -> Path:
        """``n`` grey PNGs; with ``cut``, each loses its last ``cut`` bytes (headers stay)."""
        rng = np.random.default_rng(0)
        for i in range(n):
            path = self.png(f"{folder}/{i:03d}.png", rng.integers(0, 256, size, dtype=np.uint8))
            if cut:
                path.write_bytes(path.read_bytes()[:-cut])
        return self.root / folder

    def images_and(self, name: str, content: bytes | np.ndarray) -> Path:
        """The folder of :meth:`images` plus one more file ``name`` (bytes, or a picture)."""
        folder = self.images()
        if isinstance(content, np.ndarray):
            self.png(f"images/{name}", content)
        else:
            self.file(f"images/{name}", content)
        return folder

    # --- a damaged copy of the trained run -----------------------------------------------
    def run(self, data: str = "digits") -> Path:
        return Path(shutil.copytree(self.trained[data], self.root / "run"))

    def run_config(self, dotted: str, value: object, data: str = "digits") -> Path:
        """A run whose config.json has ``value`` at ``dotted`` (``dataset_info.value_range``)."""
        run = self.run(data)
        path = run / ckpt.CONFIG_FILE
        d = json.loads(path.read_text())
        *parents, last = dotted.split(".")
        inner = d
        for key in parents:
            inner = inner[key]
        inner[last] = value
        path.write_text(json.dumps(d, indent=2))
        return run

    def run_file(self, name: str, content: bytes | Callable[[bytes], bytes]) -> Path:
        """A run whose file ``name`` is replaced (by ``content(old bytes)`` if callable)."""
        run = self.run()
        path = run / name
        old = path.read_bytes() if path.is_file() else b""
        path.write_bytes(content(old) if callable(content) else content)
        return run

    def run_without(self, *names: str) -> Path:
        run = self.run()
        for name in names:
            (run / name).unlink()
        return run

    def run_with_folder(self, name: str) -> Path:
        """A run whose file ``name`` is a folder instead."""
        run = self.run_without(name)
        (run / name).mkdir()
        return run

    def run_tensors(self, name: str, edit: Callable[[dict, dict], object]) -> Path:
        """A run whose safetensors file ``name`` is rewritten after ``edit(tensors, metadata)``."""
        run = self.run()
        path = run / name
        tensors = load_file(path)
        with open(path, "rb") as f:
            meta = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
        edit(tensors, meta)
        save_file(tensors, path, metadata=meta)
        return run

    def run_state(self, edit: Callable[[dict], object]) -> Path:
        """A run whose training-state metadata (progress, param groups, ...) is edited."""

        def edit_meta(tensors: dict, meta: dict) -> None:
            aevb = json.loads(meta["aevb"])
            edit(aevb)
            meta["aevb"] = json.dumps(aevb)

        return self.run_tensors(ckpt.STATE_FILE, edit_meta)

    # --- command lines -------------------------------------------------------------------
    def train(self, *args: object) -> list[object]:
        return [*TRAIN, *args, "--out", self.root / "out"]

    def train_on(self, data: object, *args: object) -> list[object]:
        return self.train("--dataset", data, *args)

    def resume(self, run: Path, *args: object) -> list[object]:
        return ["train", "--resume", run, "--steps", "30", "--no-progress", *args]


# --- malformed bytes --------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int) -> bytes:
    """A PNG of only a signature and an IHDR chunk declaring width x height (8-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy header (version 1.0) declaring ``shape`` and ``descr``, with no data after it."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _zip_patch(data: bytes, field: str, value: int) -> bytes:
    """Set a field of every local and central header of a zip: ``flags`` or ``method``."""
    data = bytearray(data)
    local, central = {"flags": (6, 8), "method": (8, 10)}[field]
    for sig, off in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        at = data.find(sig)
        while at >= 0:
            data[at + off : at + off + 2] = struct.pack("<H", value)
            at = data.find(sig, at + 4)
    return bytes(data)


def _npz_bytes(compressed: bool = False, **arrays) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def _corrupt_middle(data: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]


GOOD = np.random.default_rng(0).random((100, 12)).astype(np.float32)
DIGITS_LIKE = np.random.default_rng(1).random((100, 8, 8)).astype(np.float32)  # the run's shape
CSV = "a,b,c\n" + "".join(f"{i},{i % 7},{i * 0.5}\n" for i in range(40))


def _with(a: np.ndarray, index: tuple, value: float) -> np.ndarray:
    a = a.astype(np.float64 if abs(value) > 1e38 else a.dtype)
    a[index] = value
    return a


def _labels(n: int) -> np.ndarray:
    return np.arange(n) % 3


def _splits(x: np.ndarray = GOOD, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    return {"train": x[:60], "valid": x[60:80], "test": x[80:], **overrides}


def _labelled_splits(train: int = 60, valid: int = 20, test: int = 20) -> dict[str, np.ndarray]:
    return _splits(
        DIGITS_LIKE,
        train_labels=_labels(train),
        valid_labels=_labels(valid),
        test_labels=_labels(test),
    )


def _fill(value: float) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        for v in tensors.values():
            if v.is_floating_point():
                v.fill_(value)

    return edit


def _first_row_only(tensors: dict, meta: dict) -> None:
    for k, v in tensors.items():
        tensors[k] = v[:1].clone()


def _drop_first_key(tensors: dict, meta: dict) -> None:
    tensors.pop(sorted(tensors)[0])


def _add_key(name: str) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        tensors[name] = tensors[sorted(tensors)[0]].clone()

    return edit


def _rng(change: Callable) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        tensors["rng.cpu"] = change(tensors["rng.cpu"]).clone()

    return edit


def _progress(**fields) -> Callable[[dict], None]:
    return lambda meta: meta["progress"].update(fields)


def _bad_best(tensors: dict, meta: dict) -> None:
    """Early-stopping weights of the wrong shapes beside the model's."""
    for k in [k for k in tensors if k.startswith("model.")]:
        tensors["best." + k[6:]] = tensors[k].flatten()[:3].clone()


def _embed_run_with_short_labels(c: Inputs) -> list[object]:
    """A run whose .npz (split into train/valid/test) now has too few train labels."""
    data = c.npz(**_labelled_splits(train=50))
    return ["embed", c.run_config("data.dataset", str(data)), "--out", c.root / "z.npy"]


def _fifo(c: Inputs, name: str) -> Path:
    path = c.root / name
    os.mkfifo(path)
    return path


# The digits run's own settings: `train --out RUN` with them continues an unfinished RUN.
AS_TRAINED = ["train", "--hidden", "32", "--steps", "20", "--batch-size", "64", "--dataset"]
AS_TRAINED += ["digits", "--no-progress", "--figures", "false"]


def _unfinished(c: Inputs, state: bytes) -> Path:
    """The trained run without its model (so unfinished), its training state replaced."""
    run = c.run_without(ckpt.MODEL_FILE)
    (run / ckpt.STATE_FILE).write_bytes(state)
    return run


def _with_folder(run: Path, name: str) -> Path:
    (run / name).mkdir()
    return run


def _with_file(run: Path, name: str) -> Path:
    (run / name).write_text("x")
    return run


def _corrupt_copy(c: Inputs) -> Path:
    """A data folder whose binarized-MNIST files are all garbage (none is downloaded)."""
    for split in ("train", "valid", "test"):
        c.file(f"data/binarized_mnist/binarized_mnist_{split}.amat.gz", b"garbage")
    return c.root / "data"


def C(case_id: str, make: Callable[[Inputs], list[object]], expect: str = "error", marks=()):
    """A case: ``expect`` is "error" (one line), "note, error" (the error after a note
    printed before the input was found bad) or "error or success" (an odd input)."""
    return pytest.param(make, expect, id=case_id, marks=marks)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


CASES = [
    # --- .npy files ------------------------------------------------------------------------
    C("npy-empty-file", lambda c: c.train_on(c.file("d.npy"))),
    C("npy-truncated", lambda c: c.train_on(c.file("d.npy", c.npy(GOOD).read_bytes()[:300]))),
    C("npy-header-only", lambda c: c.train_on(c.file("d.npy", _npy_header((100, 12))))),
    C("npy-header-huge-shape", lambda c: c.train_on(c.file("d.npy", _npy_header((10**12, 9))))),
    C("npy-header-bad-dtype", lambda c: c.train_on(c.file("d.npy", _npy_header((9,), "<q9")))),
    C(
        "npy-header-garbage",
        lambda c: c.train_on(c.file("d.npy", b"\x93NUMPY\x01\x00\x10\x00{{{{")),
    ),
    C("npy-no-rows", lambda c: c.train_on(c.npy(GOOD[:0]))),
    C("npy-zero-columns", lambda c: c.train_on(c.npy(GOOD[:, :0]))),
    C("npy-1d", lambda c: c.train_on(c.npy(GOOD[:, 0]))),
    C("npy-0d", lambda c: c.train_on(c.npy(np.float32(1.0)))),
    C("npy-5d", lambda c: c.train_on(c.npy(np.zeros((10, 2, 2, 2, 2), np.float32)))),
    C("npy-4d-5-channels", lambda c: c.train_on(c.npy(np.zeros((10, 4, 4, 5), np.float32)))),
    C("npy-object", lambda c: c.train_on(c.npy(np.array([{"a": 1}] * 50, dtype=object)))),
    C("npy-strings", lambda c: c.train_on(c.npy(np.array([["a", "b"]] * 50)))),
    C("npy-bytes", lambda c: c.train_on(c.npy(np.array([[b"a", b"b"]] * 50)))),
    C("npy-complex", lambda c: c.train_on(c.npy(np.ones((50, 3), np.complex64)))),
    C("npy-structured", lambda c: c.train_on(c.npy(np.zeros(50, "f4,f4")))),
    C("npy-datetime", lambda c: c.train_on(c.npy(np.zeros((50, 3), "M8[s]")))),
    C("npy-nan", lambda c: c.train_on(c.npy(_with(GOOD, (3, 4), np.nan)))),
    C("npy-inf", lambda c: c.train_on(c.npy(_with(GOOD, (3, 4), -np.inf)))),
    C("npy-beyond-float32", lambda c: c.train_on(c.npy(_with(GOOD, (3, 4), 1e300)))),
    C("npy-1e30", lambda c: c.train_on(c.npy(_with(GOOD, (slice(None), 0), 1e30)))),
    C("npy-two-rows", lambda c: c.train_on(c.npy(GOOD[:2]))),
    C("npy-is-a-pickle", lambda c: c.train_on(c.file("d.npy", pickle.dumps(GOOD)))),
    C("npy-is-a-directory", lambda c: c.train_on(c.file("d.npy/inside").parent)),
    C("npy-is-a-fifo", lambda c: c.train_on(_fifo(c, "d.npy"))),
    C("npy-upper-case-suffix-npz", lambda c: c.train_on(c.file("D.NPZ", c.npy(GOOD).read_bytes()))),
    C("npy-missing", lambda c: c.train_on(c.root / "missing.npy")),
    C("unknown-suffix", lambda c: c.train_on(c.file("d.txt", "1,2,3\n"))),
    C("dataset-dev-null", lambda c: c.train_on("/dev/null")),
    C("dataset-unknown-home", lambda c: c.train_on("~no-such-user-aevb/d.npy")),
    C("dataset-unknown-name", lambda c: c.train_on("digitz")),
    C("dataset-empty-name", lambda c: c.train_on("")),
    C(
        "env-aevb-data-unknown-home",
        lambda c: c.setenv("AEVB_DATA", "~no-such-user-aevb").train_on("mnist"),
    ),
    C(
        "env-aevb-data-a-file",
        lambda c: c.setenv("AEVB_DATA", str(c.file("afile", "x"))).train_on("mnist"),
    ),
    C(
        "data-dir-a-file",
        lambda c: c.train_on("binarized-mnist", "--data-dir", c.file("afile", "x")),
    ),
    C(
        "data-dir-corrupt-files",
        lambda c: c.train_on("binarized-mnist", "--data-dir", _corrupt_copy(c)),
    ),
    C("data-dir-with-digits", lambda c: c.train("--data-dir", c.folder("data"))),
    # --- .npz files ------------------------------------------------------------------------
    C("npz-empty-file", lambda c: c.train_on(c.file("d.npz"))),
    C("npz-truncated", lambda c: c.train_on(c.file("d.npz", _npz_bytes(x=GOOD)[:200]))),
    C(
        "npz-deflate-corrupt",
        lambda c: c.train_on(c.file("d.npz", _corrupt_middle(_npz_bytes(True, x=GOOD)))),
    ),
    C(
        "npz-encrypted",
        lambda c: c.train_on(c.file("d.npz", _zip_patch(_npz_bytes(x=GOOD), "flags", 1))),
    ),
    C(
        "npz-unknown-compression",
        lambda c: c.train_on(c.file("d.npz", _zip_patch(_npz_bytes(x=GOOD), "method", 99))),
    ),
    C("npz-no-arrays", lambda c: c.train_on(c.npz())),
    C("npz-labels-only", lambda c: c.train_on(c.npz(y=_labels(100)))),
    C("npz-two-unnamed-arrays", lambda c: c.train_on(c.npz(a=GOOD, b=GOOD))),
    C("npz-labels-too-few", lambda c: c.train_on(c.npz(x=GOOD, y=_labels(99)))),
    C("npz-labels-2d", lambda c: c.train_on(c.npz(x=GOOD, y=_labels(100)[:, None]))),
    C("npz-labels-strings", lambda c: c.train_on(c.npz(x=GOOD, y=np.array(["a"] * 100)))),
    C("npz-labels-negative", lambda c: c.train_on(c.npz(x=GOOD, y=_labels(100) - 1))),
    C("npz-labels-fractional", lambda c: c.train_on(c.npz(x=GOOD, y=_labels(100) + 0.5))),
    C("npz-labels-nan", lambda c: c.train_on(c.npz(x=GOOD, y=np.full(100, np.nan)))),
    C(
        "npz-labels-object",
        lambda c: c.train_on(
            c.file("d.npz", _npz_bytes(x=GOOD, y=np.array([None] * 100, dtype=object)))
        ),
    ),
    C("npz-member-garbage", lambda c: c.train_on(c.zip({"x.npy": b"not an array"}))),
    C("npz-member-not-npy", lambda c: c.train_on(c.zip({"x": b"raw bytes"}))),
    C("npz-member-huge-shape", lambda c: c.train_on(c.zip({"x.npy": _npy_header((10**12, 9))}))),
    C("npz-split-shapes-differ", lambda c: c.train_on(c.npz(**_splits(valid=GOOD[:20, :6])))),
    C("npz-split-empty", lambda c: c.train_on(c.npz(**_splits(valid=GOOD[:0])))),
    C("npz-split-3d", lambda c: c.train_on(c.npz(**_splits(test=GOOD[:20].reshape(20, 3, 4))))),
    C("npz-split-labels-short", lambda c: c.train_on(c.npz(**_labelled_splits(train=59)))),
    C("npz-some-split-labels", lambda c: c.train_on(c.npz(**_splits(train_labels=_labels(60))))),
    C(
        "npz-split-nan",
        lambda c: c.train_on(c.npz(**_splits(test=_with(GOOD[80:], (0, 0), np.nan)))),
    ),
    # --- .csv tables -----------------------------------------------------------------------
    C("csv-empty", lambda c: c.train_on(c.csv(""))),
    C("csv-header-only", lambda c: c.train_on(c.csv("a,b,c\n"))),
    C("csv-blank-lines", lambda c: c.train_on(c.csv("\n\n\n"))),
    C("csv-ragged", lambda c: c.train_on(c.csv(CSV + "1,2\n"))),
    C("csv-not-utf8", lambda c: c.train_on(c.csv(CSV.encode() + b"\xff\xfe,1,2\n"))),
    C("csv-utf16-bom", lambda c: c.train_on(c.csv(CSV.encode("utf-16")))),
    C("csv-bom-and-text", lambda c: c.train_on(c.csv("\ufeff" + CSV + "x,1,2\n"))),
    C("csv-quoted-comma", lambda c: c.train_on(c.csv(CSV + '"1,5",2,3\n'))),
    C("csv-quoted-newline", lambda c: c.train_on(c.csv(CSV + '"1\n2",2,3\n'))),
    C("csv-unclosed-quote", lambda c: c.train_on(c.csv(CSV + '"1,2,3\n4,5,6\n'))),
    C("csv-nul-byte", lambda c: c.train_on(c.csv(CSV + "1,\x00,3\n"))),
    C("csv-nan", lambda c: c.train_on(c.csv(CSV + "1,nan,3\n"))),
    C("csv-overflow", lambda c: c.train_on(c.csv(CSV + "1,1e400,3\n"))),
    C("csv-huge", lambda c: c.train_on(c.csv(CSV + "1,1e35,3\n"))),
    C("csv-missing-value", lambda c: c.train_on(c.csv(CSV + "1,,3\n"))),
    C("csv-huge-field", lambda c: c.train_on(c.csv(CSV + "1," + "9" * 200_000 + ",3\n"))),
    C("csv-semicolons", lambda c: c.train_on(c.csv(CSV.replace(",", ";")))),
    C("csv-empty-header", lambda c: c.train_on(c.csv(",,\n1,2,3\n"))),
    C("csv-trailing-comma", lambda c: c.train_on(c.csv(CSV.replace("\n", ",\n")))),
    C("csv-two-rows", lambda c: c.train_on(c.csv("a,b\n1,2\n3,4\n"))),
    C("csv-columns-comma", lambda c: c.train_on(c.csv(CSV), "--columns", ",")),
    C("csv-columns-missing", lambda c: c.train_on(c.csv(CSV), "--columns", "a,zz")),
    C("csv-columns-twice", lambda c: c.train_on(c.csv(CSV), "--columns", "a,a")),
    C("columns-with-npy", lambda c: c.train_on(c.npy(GOOD), "--columns", "a")),
    # --- image folders ---------------------------------------------------------------------
    C("images-empty-folder", lambda c: c.train_on(c.folder("imgs"))),
    C("images-no-images", lambda c: c.train_on(c.file("imgs/notes.txt", "hi").parent)),
    C("images-corrupt-png", lambda c: c.train_on(c.images_and("999.png", b"\x89PNG garbage"))),
    C("images-zero-bytes", lambda c: c.train_on(c.images_and("999.png", b""))),
    C("images-truncated", lambda c: c.train_on(c.images(cut=30))),
    C(
        "images-truncated-read-by-workers",
        lambda c: c.train_on(c.images(cut=30), "--memory-budget-mb", "0", "--num-workers", "2"),
        "note, error",
    ),
    C(
        "images-decompression-bomb",
        lambda c: c.train_on(c.images_and("999.png", _png_header(30000, 30000))),
    ),
    C(
        "images-large-header-only",
        lambda c: c.train_on(
            c.images_and("999.png", _png_header(10000, 10000)), "--image-size", "8"
        ),
    ),
    C(
        "images-mixed-sizes",
        lambda c: c.train_on(c.images_and("999.png", np.zeros((9, 8), np.uint8))),
    ),
    C(
        "images-loose-and-class-folders",
        lambda c: c.train_on(c.images_and("cat/1.png", np.zeros((8, 8), np.uint8))),
    ),
    C("images-too-few", lambda c: c.train_on(c.images(n=2))),
    C("images-size-zero", lambda c: c.train_on(c.images(), "--image-size", "0")),
    C("images-size-3d", lambda c: c.train_on(c.images(), "--image-size", "1,2,3")),
    C("images-size-huge", lambda c: c.train_on(c.images(), "--image-size", str(2**40))),
    C("images-workers-negative", lambda c: c.train_on(c.images(), "--num-workers", "-1")),
    # --- config files ----------------------------------------------------------------------
    C("config-binary", lambda c: c.train("--config", c.config(bytes(range(256))))),
    C("config-empty", lambda c: c.train("--config", c.config(""))),
    C("config-array", lambda c: c.train("--config", c.config("[]"))),
    C("config-null", lambda c: c.train("--config", c.config("null"))),
    C("config-string", lambda c: c.train("--config", c.config('"model"'))),
    C("config-truncated", lambda c: c.train("--config", c.config('{"model": '))),
    C("config-deep", lambda c: c.train("--config", c.config("[" * 100_000 + "]" * 100_000))),
    C(
        "config-5000-digits",
        lambda c: c.train("--config", c.config('{"seed": 1' + "0" * 5000 + "}")),
    ),
    C("config-section-array", lambda c: c.train("--config", c.config('{"model": []}'))),
    C(
        "config-nested-list",
        lambda c: c.train("--config", c.config('{"model": {"hidden": [[1]]}}')),
    ),
    C(
        "config-dict-for-tuple",
        lambda c: c.train("--config", c.config('{"model": {"hidden": {}}}')),
    ),
    C("config-unknown-section", lambda c: c.train("--config", c.config('{"nope": {}}'))),
    C("config-unknown-key", lambda c: c.train("--config", c.config('{"train": {"lrr": 1}}'))),
    C("config-nan", lambda c: c.train("--config", c.config('{"train": {"lr": NaN}}'))),
    C("config-infinity", lambda c: c.train("--config", c.config('{"train": {"lr": Infinity}}'))),
    C("config-1e400", lambda c: c.train("--config", c.config('{"train": {"steps": 1e400}}'))),
    C("config-1e30", lambda c: c.train("--config", c.config('{"train": {"seed": 1e30}}'))),
    C("config-2-64", lambda c: c.train("--config", c.config(f'{{"train": {{"seed": {2**64}}}}}'))),
    C("config-string-int", lambda c: c.train("--config", c.config('{"train": {"steps": "ten"}}'))),
    C("config-float-int", lambda c: c.train("--config", c.config('{"train": {"steps": 2.5}}'))),
    C("config-bool-int", lambda c: c.train("--config", c.config('{"train": {"steps": true}}'))),
    C("config-int-bool", lambda c: c.train("--config", c.config('{"train": {"figures": 1}}'))),
    C(
        "config-negative-size",
        lambda c: c.train("--config", c.config('{"model": {"hidden": [-4]}}')),
    ),
    C("config-zero-latent", lambda c: c.train("--config", c.config('{"vae": {"latent_dim": 0}}'))),
    C("config-iwae-not-in-use", lambda c: c.train("--config", c.config('{"iwae": {"k": 5}}'))),
    C("config-variant-not-object", lambda c: c.train("--config", c.config('{"iwae": 5}'))),
    C("config-unknown-model", lambda c: c.train("--config", c.config('{"model": {"model": "x"}}'))),
    C(
        "config-unknown-likelihood",
        lambda c: c.train("--config", c.config('{"model": {"likelihood": "x"}}')),
    ),
    C(
        "config-dataset-nul",
        lambda c: c.train("--config", c.config('{"data": {"dataset": "a\\u0000b.npy"}}')),
    ),
    C("config-future-version", lambda c: c.train("--config", c.config('{"config_version": 99}'))),
    C("config-version-string", lambda c: c.train("--config", c.config('{"config_version": "2"}'))),
    C("config-bom", lambda c: c.train("--config", c.config('\ufeff{"train": {"steps": 2}}'))),
    C("config-is-a-directory", lambda c: c.train("--config", c.folder("conf"))),
    C("config-missing", lambda c: c.train("--config", c.root / "missing.json")),
    C("config-dev-zero", lambda c: c.train("--config", "/dev/zero")),
    C("config-two-megabytes", lambda c: c.train("--config", c.config(" " * 2**21 + "{}"))),
    C("config-with-resume", lambda c: c.resume(c.run(), "--config", c.config("{}"))),
    C(
        "config-input-shape-mismatch",
        lambda c: c.train("--config", c.config('{"model": {"input_shape": [12]}}')),
    ),
    # --- run directories ---------------------------------------------------------------------
    C("run-missing", lambda c: ["evaluate", c.root / "missing"]),
    C("run-is-a-file", lambda c: ["sample", c.file("afile", "x")]),
    C("run-empty-folder", lambda c: ["info", c.folder("empty")]),
    C("run-foreign-folder", lambda c: ["reconstruct", c.file("foreign/x.txt", "x").parent]),
    C(
        "run-config-truncated",
        lambda c: ["evaluate", c.run_file(ckpt.CONFIG_FILE, lambda b: b[:99])],
    ),
    C("run-config-binary", lambda c: ["info", c.run_file(ckpt.CONFIG_FILE, b"\xff\xfe\x00")]),
    C("run-config-array", lambda c: ["sample", c.run_file(ckpt.CONFIG_FILE, b"[1, 2]")]),
    C("run-config-null", lambda c: ["manifold", c.run_file(ckpt.CONFIG_FILE, b"null")]),
    C(
        "run-config-deep",
        lambda c: ["info", c.run_file(ckpt.CONFIG_FILE, b"[" * 10**5 + b"]" * 10**5)],
    ),
    C("run-config-is-a-directory", lambda c: ["sample", c.run_with_folder(ckpt.CONFIG_FILE)]),
    C("run-config-future-version", lambda c: ["info", c.run_config("config_version", 99)]),
    C("run-config-version-string", lambda c: ["info", c.run_config("config_version", "two")]),
    C("run-config-bad-section", lambda c: ["embed", c.run_config("train", []), "--out", "z.npy"]),
    C("run-config-bad-value", lambda c: ["interpolate", c.run_config("train.steps", -5)]),
    C("run-dataset-info-string", lambda c: ["sample", c.run_config("dataset_info", "x")]),
    C("run-dataset-info-list", lambda c: ["info", c.run_config("dataset_info", [1])]),
    C(
        "run-value-range-string",
        lambda c: ["sample", c.run_config("dataset_info.value_range", "ab")],
    ),
    C(
        "run-value-range-short",
        lambda c: ["reconstruct", c.run_config("dataset_info.value_range", [1])],
    ),
    C(
        "run-value-range-nan",
        lambda c: ["manifold", c.run_config("dataset_info.value_range", [0, None])],
    ),
    C(
        "run-input-shape-vs-weights",
        lambda c: ["evaluate", c.run_config("model.input_shape", [12])],
    ),
    C("run-model-too-large", lambda c: ["evaluate", c.run_config("model.hidden", [10**12])]),
    C("run-unknown-model", lambda c: ["sample", c.run_config("model.model", "nope")]),
    C("run-data-path-gone", lambda c: ["evaluate", c.run_config("data.dataset", "/no/such.npy")]),
    C("run-data-from-python", lambda c: ["reconstruct", c.run_config("data.dataset", "python:x")]),
    C(
        "run-data-other-shape",
        lambda c: ["embed", c.run(), "--dataset", c.npy(GOOD), "--out", "z.npy"],
    ),
    C(
        "run-data-out-of-range",
        lambda c: ["evaluate", c.run(), "--dataset", c.npy(DIGITS_LIKE * 3)],
    ),
    C("embed-split-labels-short", _embed_run_with_short_labels),
    C(
        "csv-run-standardize-garbage",
        lambda c: [
            "evaluate",
            c.run_config(
                "dataset_info.transform.standardize", {"mean": [1, 2, 3], "std": [0, "a", 1]}, "csv"
            ),
        ],
    ),
    C(
        "csv-run-standardize-missing",
        lambda c: [
            "embed",
            c.run_config("dataset_info.transform.standardize", {"mean": [1, 2, 3]}, "csv"),
            "--out",
            "z.npy",
        ],
    ),
    C("model-zero-bytes", lambda c: ["sample", c.run_file(ckpt.MODEL_FILE, b"")]),
    C(
        "model-truncated",
        lambda c: ["sample", c.run_file(ckpt.MODEL_FILE, lambda b: b[: len(b) // 2])],
    ),
    C("model-garbage", lambda c: ["manifold", c.run_file(ckpt.MODEL_FILE, os.urandom(4096))]),
    C(
        "model-header-length",
        lambda c: [
            "manifold",
            c.run_file(ckpt.MODEL_FILE, lambda b: (2**63).to_bytes(8, "little") + b[8:]),
        ],
    ),
    C(
        "model-header-not-json",
        lambda c: [
            "interpolate",
            c.run_file(ckpt.MODEL_FILE, lambda b: b[:8] + b"\xff" * 16 + b[24:]),
        ],
    ),
    C("model-missing", lambda c: ["evaluate", c.run_without(ckpt.MODEL_FILE)]),
    C(
        "model-and-state-missing",
        lambda c: ["sample", c.run_without(ckpt.MODEL_FILE, ckpt.STATE_FILE)],
    ),
    C("model-is-a-directory", lambda c: ["sample", c.run_with_folder(ckpt.MODEL_FILE)]),
    C(
        "model-nan-weights",
        lambda c: ["sample", c.run_tensors(ckpt.MODEL_FILE, _fill(float("nan")))],
    ),
    C(
        "model-inf-weights",
        lambda c: ["embed", c.run_tensors(ckpt.MODEL_FILE, _fill(float("inf"))), "--out", "z.npy"],
    ),
    C("model-wrong-shapes", lambda c: ["sample", c.run_tensors(ckpt.MODEL_FILE, _first_row_only)]),
    C("model-missing-key", lambda c: ["sample", c.run_tensors(ckpt.MODEL_FILE, _drop_first_key)]),
    C("model-extra-key", lambda c: ["sample", c.run_tensors(ckpt.MODEL_FILE, _add_key("extra"))]),
    C("state-garbage", lambda c: c.resume(c.run_file(ckpt.STATE_FILE, os.urandom(64)))),
    C("state-empty", lambda c: c.resume(c.run_file(ckpt.STATE_FILE, b""))),
    C("state-missing", lambda c: c.resume(c.run_without(ckpt.STATE_FILE))),
    C(
        "state-header-garbage",
        lambda c: c.resume(c.run_file(ckpt.STATE_FILE, lambda b: b[:8] + b"{" * 40 + b[48:])),
    ),
    C("state-nan-weights", lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, _fill(float("nan"))))),
    C(
        "state-no-rng",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, lambda t, m: t.pop("rng.cpu"))),
    ),
    C(
        "state-rng-dtype",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, _rng(lambda r: r.float()))),
    ),
    C("state-rng-size", lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, _rng(lambda r: r[:10])))),
    C(
        "state-no-metadata",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, lambda t, m: m.pop("aevb"))),
    ),
    C(
        "state-metadata-garbage",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, lambda t, m: m.update(aevb="{"))),
    ),
    C(
        "state-metadata-list",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, lambda t, m: m.update(aevb="[]"))),
    ),
    C(
        "state-progress-no-step",
        lambda c: c.resume(c.run_state(lambda m: m["progress"].pop("step"))),
    ),
    C("state-progress-not-object", lambda c: c.resume(c.run_state(lambda m: m.update(progress=3)))),
    C("state-progress-epoch-string", lambda c: c.resume(c.run_state(_progress(epoch="x")))),
    C("state-progress-negative-step", lambda c: c.resume(c.run_state(_progress(step=-5)))),
    C("state-progress-float-step", lambda c: c.resume(c.run_state(_progress(step=5.5)))),
    C(
        "state-progress-epoch-after-step",
        lambda c: c.resume(c.run_state(_progress(epoch_start_step=99))),
    ),
    C("state-progress-best-string", lambda c: c.resume(c.run_state(_progress(best_valid="x")))),
    C(
        "state-optim-scalars-list",
        lambda c: c.resume(c.run_state(lambda m: m.update(optim_scalars=[1]))),
    ),
    C(
        "state-optim-scalars-key",
        lambda c: c.resume(c.run_state(lambda m: m.update(optim_scalars={"x": {}}))),
    ),
    C("state-no-param-groups", lambda c: c.resume(c.run_state(lambda m: m.pop("param_groups")))),
    C(
        "state-param-groups-garbage",
        lambda c: c.resume(c.run_state(lambda m: m.update(param_groups=[{"params": "x"}]))),
    ),
    C(
        "state-optim-key-index",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, _add_key("optim.x.exp_avg"))),
    ),
    C(
        "state-optim-key-short",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, _add_key("optim.0"))),
    ),
    C(
        "state-best-wrong-shapes",
        lambda c: c.resume(c.run_tensors(ckpt.STATE_FILE, _bad_best), "--patience", "5"),
    ),
    C("run-lock-is-a-directory", lambda c: c.resume(_with_folder(c.run(), ".aevb.lock"))),
    C(
        "unfinished-run-corrupt-state-out",
        lambda c: [*AS_TRAINED, "--out", _unfinished(c, b"garbage")],
    ),
    C("unfinished-run-corrupt-state-resume", lambda c: c.resume(_unfinished(c, b"garbage"))),
    C("sample-figures-is-a-file", lambda c: ["sample", _with_file(c.run(), "figures")]),
    C("resume-data-path-gone", lambda c: c.resume(c.run_config("data.dataset", "/no/such.npy"))),
    C("resume-step-reached", lambda c: ["train", "--resume", c.run(), "--steps", "10"]),
    C("resume-finished-no-steps", lambda c: ["train", "--resume", c.run()]),
    C("resume-change-model", lambda c: c.resume(c.run(), "--latent-dim", "3")),
    C("resume-empty", lambda c: ["train", "--resume", ""]),
    C("resume-a-file", lambda c: ["train", "--resume", c.file("afile", "x")]),
    C("resume-with-out", lambda c: c.resume(c.run(), "--out", c.root / "elsewhere")),
    C("resume-bad-batch", lambda c: c.resume(c.run(), "--batch-size", "0")),
    C(
        "resume-nproc-broken-run",
        lambda c: c.resume(c.run_file(ckpt.CONFIG_FILE, b"{"), "--nproc", "2"),
    ),
    # --- numeric flags and arguments -------------------------------------------------------
    C("sample-n-zero", lambda c: ["sample", c.run(), "-n", "0"]),
    C("sample-n-negative", lambda c: ["sample", c.run(), "-n", "-3"]),
    C("sample-n-nan", lambda c: ["sample", c.run(), "-n", "nan"]),
    C("sample-n-1e30", lambda c: ["sample", c.run(), "-n", str(10**30)]),
    C("sample-n-2-50", lambda c: ["sample", c.run(), "-n", str(2**50)]),
    C("sample-temperature-nan", lambda c: ["sample", c.run(), "--temperature", "nan"]),
    C("sample-temperature-inf", lambda c: ["sample", c.run(), "--temperature", "inf"]),
    C("sample-temperature-negative", lambda c: ["sample", c.run(), "--temperature", "-1"]),
    C("sample-seed-2-64", lambda c: ["sample", c.run(), "--seed", str(2**64)]),
    C("sample-seed-minus-2-64", lambda c: ["sample", c.run(), "--seed", str(-(2**64))]),
    C("sample-seed-text", lambda c: ["sample", c.run(), "--seed", "0x10"]),
    C("sample-out-directory", lambda c: ["sample", c.run(), "--out", c.root]),
    C("sample-out-suffix", lambda c: ["sample", c.run(), "--out", "s.jpg"]),
    C("sample-out-in-a-file", lambda c: ["sample", c.run(), "--out", c.file("f", "x") / "s.png"]),
    C("sample-out-empty", lambda c: ["sample", c.run(), "--out", ""]),
    C("sample-out-fifo", lambda c: ["sample", c.run(), "--out", _fifo(c, "s.png")]),
    C(
        "sample-npy-beside-is-a-directory",
        lambda c: ["sample", c.run(), "--out", c.folder("s.npy").with_suffix(".png")],
    ),
    C("sample-unfinished-run", lambda c: ["sample", c.run_without(ckpt.MODEL_FILE)]),
    C("reconstruct-n-zero", lambda c: ["reconstruct", c.run(), "-n", "0"]),
    C("reconstruct-other-shape", lambda c: ["reconstruct", c.run(), "--dataset", c.npy(GOOD)]),
    C("reconstruct-split", lambda c: ["reconstruct", c.run(), "--split", "dev"]),
    C("interpolate-steps-one", lambda c: ["interpolate", c.run(), "--steps", "1"]),
    C("interpolate-steps-1e30", lambda c: ["interpolate", c.run(), "--steps", str(10**30)]),
    C("interpolate-steps-2-50", lambda c: ["interpolate", c.run(), "--steps", str(2**50)]),
    C("interpolate-pairs-zero", lambda c: ["interpolate", c.run(), "--pairs", "0"]),
    C("manifold-grid-one", lambda c: ["manifold", c.run(), "--grid", "1"]),
    C("manifold-grid-negative", lambda c: ["manifold", c.run(), "--grid", "-5"]),
    C("manifold-grid-1e30", lambda c: ["manifold", c.run(), "--grid", str(10**30)]),
    C("manifold-grid-2-40", lambda c: ["manifold", c.run(), "--grid", str(2**40)]),
    C("evaluate-k-zero", lambda c: ["evaluate", c.run(), "--k", "0"]),
    C("evaluate-k-1e30", lambda c: ["evaluate", c.run(), "--k", str(10**30)]),
    C("evaluate-chunk-negative", lambda c: ["evaluate", c.run(), "--chunk-size", "-1"]),
    C("evaluate-chunk-1e30", lambda c: ["evaluate", c.run(), "--chunk-size", str(10**30)]),
    C("evaluate-batch-zero", lambda c: ["evaluate", c.run(), "--batch-size", "0"]),
    C("evaluate-batch-1e30", lambda c: ["evaluate", c.run(), "--batch-size", str(10**30)]),
    C("evaluate-naive-negative", lambda c: ["evaluate", c.run(), "--naive", "-1"]),
    C("evaluate-seed-negative", lambda c: ["evaluate", c.run(), "--seed", "-1"]),
    C("evaluate-seed-2-64", lambda c: ["evaluate", c.run(), "--seed", str(2**64)]),
    C("evaluate-device-tpu", lambda c: ["evaluate", c.run(), "--device", "tpu"]),
    C("evaluate-report-directory", lambda c: ["evaluate", c.run(), "--report", c.root]),
    C(
        "evaluate-report-in-a-file",
        lambda c: ["evaluate", c.run(), "--report", c.file("f") / "r.md"],
    ),
    C("evaluate-report-fifo", lambda c: ["evaluate", c.run(), "--report", _fifo(c, "r.md")]),
    C("embed-out-suffix", lambda c: ["embed", c.run(), "--out", "z.txt"]),
    C("embed-out-directory", lambda c: ["embed", c.run(), "--out", c.folder("z.npy")]),
    C("embed-out-missing", lambda c: ["embed", c.run()]),
    C("embed-split", lambda c: ["embed", c.run(), "--out", "z.npy", "--split", "dev"]),
    C("train-steps-zero", lambda c: c.train("--steps", "0")),
    C("train-epochs-negative", lambda c: c.train("--epochs", "-1")),
    C("train-batch-nan", lambda c: c.train("--batch-size", "nan")),
    C("train-lr-inf", lambda c: c.train("--lr", "inf")),
    C("train-lr-underflow", lambda c: c.train("--lr", "1e-400")),
    C("train-seed-negative", lambda c: c.train("--seed", "-1")),
    C("train-seed-2-64", lambda c: c.train("--seed", str(2**64))),
    C("train-split-seed-2-64", lambda c: c.train("--split-seed", str(2**64))),
    C("train-hidden-zero", lambda c: c.train("--hidden", "0")),
    C("train-hidden-too-large", lambda c: c.train("--hidden", str(10**12))),
    C("train-latent-too-large", lambda c: c.train("--latent-dim", str(10**12))),
    C("train-conv-too-deep", lambda c: c.train("--arch", "conv", "--hidden", "8,8,8,8,8")),
    C("train-conv-on-vectors", lambda c: c.train("--dataset", "ring", "--arch", "conv")),
    C(
        "train-synthetic-too-large",
        lambda c: c.train("--dataset", "ring", "--synthetic-size", str(10**13)),
    ),
    C("train-device-tpu", lambda c: c.train("--device", "tpu")),
    C("train-device-cuda-absent", lambda c: c.train("--device", "cuda"), marks=NO_CUDA),
    C(
        "train-nproc-2-cuda-absent",
        lambda c: c.train("--device", "cuda", "--nproc", "2"),
        marks=NO_CUDA,
    ),
    C(
        "resume-nproc-2-cuda-absent",
        lambda c: c.resume(c.run(), "--device", "cuda", "--nproc", "2"),
        marks=NO_CUDA,
    ),
    C("evaluate-cuda-absent", lambda c: ["evaluate", c.run(), "--device", "cuda"], marks=NO_CUDA),
    C("train-nproc-zero", lambda c: c.train("--nproc", "0")),
    C("train-nproc-negative", lambda c: c.train("--nproc", "-2")),
    C("train-nproc-huge", lambda c: c.train("--nproc", str(10**6))),
    C("train-valid-fraction-nan", lambda c: c.train("--valid-fraction", "nan")),
    C("train-figures-maybe", lambda c: c.train("--figures", "maybe")),
    C("train-k-without-iwae", lambda c: c.train("--k", "5")),
    C("train-nproc-2-empty-data", lambda c: c.train_on(c.npy(GOOD[:0]), "--nproc", "2")),
    C(
        "train-nproc-2-bernoulli-out-of-range",
        lambda c: c.train_on(c.npy(GOOD * 3), "--likelihood", "bernoulli", "--nproc", "2"),
    ),
    C(
        "train-nproc-2-resume-data-gone",
        lambda c: c.resume(c.run_config("data.dataset", "/no/such.npy"), "--nproc", "2"),
    ),
    C(
        "train-diverges-before-a-checkpoint",
        lambda c: c.train(
            "--lr", "1e30", "--steps", "40", "--max-skipped-steps", "2", "--log-every", "1"
        ),
    ),
    C("train-iwae-k-too-large", lambda c: c.train("--objective", "iwae", "--k", str(10**11))),
    C(
        "train-binarize-out-of-range",
        lambda c: c.train_on(c.npy(GOOD * 3), "--binarize", "dynamic"),
    ),
    C("train-binarize-csv", lambda c: c.train_on(c.csv(CSV), "--binarize", "threshold")),
    C("train-bernoulli-csv", lambda c: c.train_on(c.csv(CSV), "--likelihood", "bernoulli")),
    C("train-sigma-subnormal", lambda c: c.train("--likelihood", "gaussian", "--sigma", "1e-320")),
    C("train-snapshot-epochs-zero", lambda c: c.train("--snapshot-epochs", "0")),
    C("train-image-size-on-npy", lambda c: c.train_on(c.npy(GOOD), "--image-size", "8")),
    C("dataset-name-too-long", lambda c: c.train_on("x" * 300 + ".npy")),
    C("train-out-name-too-long", lambda c: [*TRAIN, "--out", "y" * 300]),
    C("train-out-a-fifo", lambda c: [*TRAIN, "--out", _fifo(c, "run")]),
    C("train-out-a-file", lambda c: [*TRAIN, "--out", c.file("afile", "x")]),
    C("train-out-in-a-file", lambda c: [*TRAIN, "--out", c.file("afile", "x") / "run"]),
    C("train-out-finished-run", lambda c: [*TRAIN, "--out", c.run()]),
    C("train-out-foreign", lambda c: [*TRAIN, "--out", c.file("foreign/x", "x").parent]),
    C("train-out-dot", lambda c: [*TRAIN, "--out", "."]),
    C("train-default-out", lambda c: [*TRAIN, "--dataset", c.npy(GOOD[:0])]),  # runs/... in cwd
    C(
        "train-prior-too-large",
        lambda c: c.train("--prior", "vamp", "--pseudo-inputs", str(10**12)),
    ),
    C("train-samples-too-large", lambda c: c.train("--samples", str(10**11))),
    C(
        "train-out-new-parents",
        lambda c: [*TRAIN, "--dataset", c.npy(GOOD[:0]), "--out", "a/b/run"],
    ),
    # --- odd input that may succeed ----------------------------------------------------------
    C(
        "metrics-garbage-lines",
        lambda c: [
            "info",
            c.run_file(ckpt.METRICS_FILE, lambda b: b + b"garbage\n[1, 2]\n5\n{}\n"),
        ],
        expect="error or success",
    ),
    C(
        "metrics-binary",
        lambda c: ["info", c.run_file(ckpt.METRICS_FILE, lambda b: b + b"\xff\n")],
        expect="error or success",
    ),
    C(
        "metrics-ill-typed-json",
        lambda c: [
            "info",
            "--json",
            c.run_file(ckpt.METRICS_FILE, b'{"step": "x", "epoch": []}\n'),
        ],
        expect="error or success",
    ),
    C(
        "metrics-ill-typed-text",
        lambda c: ["info", c.run_file(ckpt.METRICS_FILE, b'{"step": "x", "wall_time_s": "y"}\n')],
        expect="error or success",
    ),
    C(
        "metrics-is-a-directory",
        lambda c: ["info", c.run_with_folder(ckpt.METRICS_FILE)],
        expect="error or success",
    ),
    C(
        "run-transform-not-object",
        lambda c: ["evaluate", "--json", c.run_config("dataset_info.transform", 5)],
        expect="error or success",
    ),
    C(
        "evaluate-seed-a-date",
        lambda c: ["evaluate", "--json", c.run(), "--seed", "20260101"],
        expect="error or success",
    ),  # seeds derived from it once overflowed torch's range
    C(
        "run-state-garbage-info",
        lambda c: ["info", c.run_file(ckpt.STATE_FILE, b"x" * 50)],
        expect="error or success",
    ),
]


def _snapshot(root: Path) -> dict[str, object]:
    """Every file (its bytes), folder and special file under ``root``."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            mode = path.lstat().st_mode
            key = str(path.relative_to(root))
            if stat.S_ISREG(mode):
                out[key] = path.read_bytes()
            elif stat.S_ISLNK(mode):
                out[key] = ("link", os.readlink(path))
            else:
                out[key] = ("folder" if stat.S_ISDIR(mode) else "special", stat.S_IFMT(mode))
    return out


@pytest.mark.parametrize("make, expect", CASES)
def test_malformed_input(make, expect, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs (runs/..., z.npy) land here too
    inputs = Inputs(tmp_path, trained)
    argv = make(inputs)
    for name, value in inputs.env.items():
        monkeypatch.setenv(name, value)
    before = _snapshot(tmp_path)
    res = run_cli(*argv)
    after = _snapshot(tmp_path)

    assert "Traceback" not in res.out + res.err, res.err
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"added {added}, removed {removed}, changed {changed}"
    if expect == "error or success" and res.code == 0:
        return
    assert res.code != 0, f"exit 0 on bad input; stdout ends {res.out[-300:]!r}"
    lines = [line for line in res.err.splitlines() if line.strip()]
    if expect == "note, error":  # a note said before the input was found bad
        assert len(lines) == 2 and lines[0].startswith(f"aevb {argv[0]}: note: "), res.err
        lines = lines[1:]
    assert len(lines) == 1, f"expected one line on stderr, got {res.err!r}"
    assert lines[0].startswith(f"aevb {argv[0]}: error"), lines[0]
