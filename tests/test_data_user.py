"""User data: image folders, CSV tables, arrays, Python tensors; the from-disk path; the CLI.

Pixel values and table values round-trip exactly, class folders map to sorted labels,
CSV standardisation uses training-split statistics that land in config.json, each kind
of bad input is one clear DataError, and an image folder over the memory budget is served
from disk with exactly the batches of the in-memory path.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aevb.cli import main
from aevb.config import DataConfig
from aevb.data import Dataset, StreamingDataset, from_tensor, from_torch_dataset, load_dataset
from aevb.errors import DataError

SPLITS = ("train", "valid", "test")


def all_examples(ds: Dataset) -> torch.Tensor:
    return torch.cat([ds.tensor(s) for s in SPLITS])


def same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as multisets of examples (splits shuffle the order)."""
    return len(a) == len(b) and torch.equal(
        torch.unique(a.flatten(1), dim=0), torch.unique(b.flatten(1), dim=0)
    )


@pytest.fixture
def png_folder(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """``imgs/{bird,cat}/NNN.png``: 8-bit grayscale 6x5 images, 12 and 18 of them."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    images = {}
    for cls, n in (("cat", 18), ("bird", 12)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (6, 5), dtype=np.uint8)
            Image.fromarray(a).save(root / cls / f"{i:03d}.png")
            images[f"{cls}/{i:03d}"] = a
    (root / "cat" / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    (root / "notes.txt").write_text("not an image")  # so are other suffixes
    return root, images


# --- image folders -----------------------------------------------------------------------
def test_png_folder_pixels_labels_and_splits(png_folder):
    root, images = png_folder
    ds = load_dataset(DataConfig(dataset=str(root)))
    assert type(ds) is Dataset
    assert ds.info.shape == (1, 6, 5) and ds.info.has_labels and ds.info.likelihood == "bernoulli"
    assert ds.info.transform["classes"] == ["bird", "cat"]  # sorted names -> 0, 1
    assert [ds.size(s) for s in SPLITS] == [24, 3, 3]
    x = all_examples(ds)
    y = torch.cat([ds.labels(s) for s in SPLITS])
    assert torch.equal((x * 255).round(), x * 255)  # exact uint8 / 255
    for cls, label in (("bird", 0), ("cat", 1)):
        want = torch.stack([torch.from_numpy(a) for k, a in images.items() if k.startswith(cls)])
        got = (x[y == label] * 255).round().to(torch.uint8).squeeze(1)
        assert same_rows(got, want)


def test_rgb_images_keep_channel_order_and_loose_images_have_no_labels(tmp_path):
    root = tmp_path / "rgb"
    root.mkdir()
    a = np.zeros((4, 3, 3), dtype=np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = 10, 20, 30
    for i in range(10):
        Image.fromarray(a).save(root / f"{i}.png")
    Image.fromarray(a).save(root / "10.jpg", quality=100)
    ds = load_dataset(DataConfig(dataset=str(root)))
    assert ds.info.shape == (3, 4, 3) and not ds.info.has_labels
    assert ds.info.likelihood == "gaussian-pixel"
    x = ds.tensor("train") * 255
    assert (x[:, 0] - 10).abs().max() <= 2 and (x[:, 2] - 30).abs().max() <= 2  # JPEG is lossy


def test_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8) if i % 2 else (4, 6), 200, np.uint8)).save(root / f"{i}.png")
    with pytest.raises(DataError, match="mixes image sizes.*--image-size") as e:
        load_dataset(DataConfig(dataset=str(root)))
    assert "\n" not in str(e.value)
    ds = load_dataset(DataConfig(dataset=str(root), image_size=(5, 7)))
    assert ds.info.shape == (1, 5, 7) and ds.info.transform["resized"]
    assert torch.allclose(all_examples(ds), torch.full((6, 1, 5, 7), 200 / 255))
    assert load_dataset(DataConfig(dataset=str(root), image_size=(4,))).info.shape == (1, 4, 4)


def test_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(DataConfig(dataset=str(empty)))
    both = tmp_path / "both"
    (both / "cls").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(both / "cls" / "a.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(both / "b.png")
    with pytest.raises(DataError, match="both images .* and class folders"):
        load_dataset(DataConfig(dataset=str(both)))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*x.png"):
        load_dataset(DataConfig(dataset=str(broken)))


# --- over the memory budget: the same contract from disk --------------------------------
def test_streaming_path_yields_the_in_memory_batches(png_folder, caplog):
    root, _ = png_folder
    memory = load_dataset(DataConfig(dataset=str(root)))
    with caplog.at_level(logging.WARNING, logger="aevb.data"):
        disk = load_dataset(DataConfig(dataset=str(root), memory_budget_mb=0, num_workers=2))
    assert isinstance(disk, StreamingDataset)
    assert "over --memory-budget-mb 0; reading them from disk with 2 DataLoader" in caplog.text
    assert disk.info.shape == memory.info.shape
    for s in SPLITS:
        assert disk.size(s) == memory.size(s)
        assert torch.equal(disk.labels(s), memory.labels(s))
        assert torch.equal(disk.tensor(s), memory.tensor(s))
        assert torch.equal(disk.head(s, 2), memory.head(s, 2))
    for epoch in (0, 1):  # a permutation per epoch; ranks take contiguous slices
        for rank in (0, 1):
            a = list(memory.train_batches(8, 5, epoch, rank=rank, world_size=2))
            b = list(disk.train_batches(8, 5, epoch, rank=rank, world_size=2))
            assert len(a) == 3
            for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)  # labels travel with x
    resumed = list(disk.train_batches(8, 5, 1, start_step=2))
    assert torch.equal(resumed[0][0], list(memory.train_batches(8, 5, 1))[2][0])
    a = list(memory.indexed_eval_batches("train", 5, rank=1, world_size=2))
    b = list(disk.indexed_eval_batches("train", 5, rank=1, world_size=2))
    assert [i for i, _, _ in a] == [i for i, _, _ in b] == [3, 4]
    for (_, xa, ya), (_, xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_streaming_binarization_matches_in_memory(png_folder):
    root, _ = png_folder
    for mode in ("dynamic", "threshold"):
        memory = load_dataset(DataConfig(dataset=str(root), binarize=mode))
        disk = load_dataset(
            DataConfig(dataset=str(root), binarize=mode, memory_budget_mb=0, num_workers=0)
        )
        assert isinstance(disk, StreamingDataset)
        for s in ("valid", "test"):
            assert torch.equal(disk.tensor(s), memory.tensor(s))
        torch.manual_seed(3)
        a = [x for x, _ in memory.train_batches(8, 0, 0)]
        torch.manual_seed(3)
        b = [x for x, _ in disk.train_batches(8, 0, 0)]
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


# --- CSV tables --------------------------------------------------------------------------
def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def test_csv_columns_and_standardisation(tmp_path):
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.normal(5, 2, 50), rng.normal(-1, 0.1, 50), np.full(50, 3.0)])
    names = [f"r{i}" for i in range(50)]
    rows = [[n, *(f"{v:.17g}" for v in r)] for n, r in zip(names, table, strict=True)]
    path = write_csv(tmp_path / "t.csv", ["name", "a", "b", "c"], rows)
    ds = load_dataset(DataConfig(dataset=str(path), columns="b,a,c"))
    assert ds.info.shape == (3,) and ds.info.likelihood.startswith("gaussian")
    st = ds.info.transform["standardize"]
    assert ds.info.transform["columns"] == ["b", "a", "c"]
    train = ds.tensor("train").double()
    assert torch.allclose(train.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(
        train.std(0, unbiased=False)[:2], torch.ones(2, dtype=torch.float64), atol=1e-5
    )
    assert st["std"][2] == 1.0  # a constant column is centred, not divided by zero
    # Undoing the recorded transform gives back the file's values.
    x = all_examples(ds).double() * torch.tensor(st["std"]) + torch.tensor(st["mean"])
    want = torch.from_numpy(table[:, [1, 0, 2]])
    x, want = x[x[:, 1].argsort()], want[want[:, 1].argsort()]  # distinct values in column a
    assert torch.allclose(x, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "cell,what",
    [
        ("abc", "'abc', not a finite number"),
        ("", "a missing value"),
        ("nan", "'nan', not a finite number"),
        ("inf", "'inf', not a finite number"),
    ],
)
def test_csv_bad_cells_name_column_and_row(tmp_path, cell, what):
    rows = [[i, i * 2.0] for i in range(10)]
    rows[6][1] = cell
    path = write_csv(tmp_path / "bad.csv", ["a", "b"], rows)
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(dataset=str(path)))
    msg = str(e.value)
    assert f"column 'b', row 7 (line 8) has {what}" in msg and "\n" not in msg
    # leaving the bad column out works
    assert load_dataset(DataConfig(dataset=str(path), columns="a")).info.shape == (1,)


def test_csv_unknown_column_and_empty_file(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["a", "b"], [[1, 2]] * 10)
    with pytest.raises(DataError, match=r"no column\(s\) \['z'\]; its columns are \['a', 'b'\]"):
        load_dataset(DataConfig(dataset=str(path), columns="a,z"))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(DataConfig(dataset=str(tmp_path / "e.csv")))


# --- arrays and Python objects -----------------------------------------------------------
def test_npy_without_pickle(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (40, 3, 4), dtype=np.uint8)
    np.save(tmp_path / "a.npy", a)
    ds = load_dataset(DataConfig(dataset=str(tmp_path / "a.npy")))
    pixels = (all_examples(ds) * 255).round().to(torch.uint8).squeeze(1)
    assert same_rows(pixels, torch.from_numpy(a))
    np.save(tmp_path / "o.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="never unpickles"):
        load_dataset(DataConfig(dataset=str(tmp_path / "o.npy")))


def test_from_tensor_and_from_torch_dataset():
    x = torch.rand(50, 2, 3)
    y = torch.arange(50) % 4
    ds = from_tensor(x, y, seed=1)
    assert ds.info.shape == (2, 3) and ds.info.likelihood == "bernoulli"
    assert same_rows(all_examples(ds), x)
    # labels travel with their examples
    for s in SPLITS:
        for xi, yi in zip(ds.tensor(s), ds.labels(s), strict=True):
            k = int((x.flatten(1) == xi.flatten()).all(1).nonzero())
            assert int(y[k]) == int(yi)
    pairs = torch.utils.data.TensorDataset(x * 10 - 5, y)
    ds2 = from_torch_dataset(pairs, batch_size=7, seed=1)
    assert ds2.info.likelihood == "gaussian-pixel" and ds2.info.has_labels
    assert same_rows(all_examples(ds2), x * 10 - 5)
    with pytest.raises(DataError, match="NaN or inf"):
        from_tensor(torch.tensor([[0.0, float("nan")]] * 20))
    with pytest.raises(DataError, match="labels must be integers"):
        from_tensor(x, torch.rand(50))


# --- end to end through the CLI ----------------------------------------------------------
TRAIN = [
    "train",
    "--steps",
    "5",
    "--no-progress",
    "--figures",
    "false",
    "--hidden",
    "16",
    "--batch-size",
    "8",
    "--eval-batch-size",
    "16",
]


def test_cli_trains_on_each_kind_of_user_data(tmp_path, png_folder, capsys):
    root, _ = png_folder
    table = np.random.default_rng(0).normal(size=(40, 3))
    csv = write_csv(tmp_path / "t.csv", ["x", "y", "z"], table.tolist())
    np.save(tmp_path / "a.npy", (table > 0).astype(np.float32))
    kinds = {
        "folder": [str(root)],
        "disk": [
            str(root),
            "--memory-budget-mb",
            "0",
            "--num-workers",
            "0",
            "--binarize",
            "dynamic",
        ],
        "csv": [str(csv), "--columns", "z,x"],
        "npy": [str(tmp_path / "a.npy")],
    }
    for kind, args in kinds.items():
        out = tmp_path / f"run-{kind}"
        code = main([*TRAIN, "--dataset", *args, "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
        info = json.loads((out / "config.json").read_text())["dataset_info"]
        assert info["sizes"]["train"] == {"folder": 24, "disk": 24, "csv": 32, "npy": 32}[kind]
    csv_info = json.loads((tmp_path / "run-csv" / "config.json").read_text())
    st = csv_info["dataset_info"]["transform"]["standardize"]
    assert csv_info["data"]["columns"] == "z,x" and len(st["mean"]) == len(st["std"]) == 2
    # a later command reloads the data from the run's config and applies the same transform
    emb = tmp_path / "z.npy"
    assert main(["embed", str(tmp_path / "run-csv"), "--split", "test", "--out", str(emb)]) == 0
    assert np.load(emb).shape[0] == 4


def test_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    path = write_csv(tmp_path / "bad.csv", ["a"], [[1], ["x"]] + [[2]] * 10)
    assert main([*TRAIN, "--dataset", str(path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "column 'a', row 2" in err
    assert not (tmp_path / "r").exists()


def test_docs_datasets_example_runs(tmp_path, monkeypatch):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    blocks = re.findall(r"```py\n(.*?)```", doc, flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md#datasets", "exec"), namespace)
    assert namespace["data"].info.shape == (1, 8, 8) and namespace["data"].info.has_labels
    assert same_rows(all_examples(namespace["same"]), namespace["x"])
    assert (tmp_path / "runs/tensor-example/model.safetensors").exists()


def test_from_disk_training_resumes_bit_exactly(tmp_path, png_folder, capsys):
    from safetensors.torch import load_file

    root, _ = png_folder
    common = [
        *TRAIN[3:],
        "--dataset",
        str(root),
        "--memory-budget-mb",
        "0",
        "--num-workers",
        "1",
        "--binarize",
        "dynamic",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *common, "--steps", "5", "--out", str(straight)]) == 0
    assert main(["train", *common, "--steps", "2", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--steps", "5", "--no-progress"]) == 0, (
        capsys.readouterr().err
    )
    a = load_file(straight / "model.safetensors")
    b = load_file(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- labels through the data path --------------------------------------------------------
def test_csv_label_column_maps_classes_and_leaves_the_features(tmp_path):
    rng = np.random.default_rng(1)
    names = ["cat", "dog", "ant"]
    rows = [
        [f"{v:.6f}", names[i % 3], f"{w:.6f}"] for i, (v, w) in enumerate(rng.normal(size=(30, 2)))
    ]
    path = write_csv(tmp_path / "t.csv", ["a", "kind", "b"], rows)
    ds = load_dataset(DataConfig(dataset=str(path), label_column="kind"))
    assert ds.info.shape == (2,) and ds.info.transform["columns"] == ["a", "b"]
    assert ds.info.transform["classes"] == ["ant", "cat", "dog"]  # sorted: label k = classes[k]
    assert ds.info.has_labels and ds.info.num_classes == 3
    parts = {s: ds.labels(s) for s in SPLITS}
    x = torch.cat([ds.tensor(s) for s in SPLITS])
    y = torch.cat(list(parts.values()))
    st = ds.info.transform["standardize"]
    a = (x[:, 0].double() * st["std"][0] + st["mean"][0]).numpy()
    for value, label in zip(a, y.tolist(), strict=True):  # each row keeps its own class
        k = int(np.argmin(np.abs(np.array([float(r[0]) for r in rows]) - value)))
        assert ds.info.transform["classes"][label] == rows[k][1]
    # integer classes are sorted as numbers and mapped to 0..C-1
    ints = write_csv(
        tmp_path / "i.csv", ["a", "y"], [[i * 0.5, [10, 2, 7][i % 3]] for i in range(30)]
    )
    di = load_dataset(DataConfig(dataset=str(ints), label_column="y"))
    assert di.info.transform["classes"] == [2, 7, 10] and di.info.num_classes == 3
    with pytest.raises(DataError, match="leave it out of --columns"):
        load_dataset(DataConfig(dataset=str(path), columns="a,kind", label_column="kind"))
    with pytest.raises(DataError, match="no column 'z' for --label-column"):
        load_dataset(DataConfig(dataset=str(path), label_column="z"))
    rows[4][1] = ""
    with pytest.raises(DataError, match="label column 'kind', row 5 .* is empty"):
        load_dataset(
            DataConfig(
                dataset=str(write_csv(tmp_path / "e.csv", ["a", "kind", "b"], rows)),
                label_column="kind",
            )
        )


def test_class_counts_are_recorded_and_checked(png_folder):
    root, _ = png_folder
    assert load_dataset(DataConfig(dataset=str(root))).info.num_classes == 2
    assert load_dataset(DataConfig(dataset="digits")).info.num_classes == 10
    assert from_tensor(torch.rand(30, 2), torch.arange(30) % 4).info.num_classes == 4
    assert from_tensor(torch.rand(30, 2)).info.num_classes is None
    from aevb.data import DatasetInfo

    info = DatasetInfo("t", (2,), (0.0, 1.0), True, "gaussian", num_classes=3)
    with pytest.raises(DataError, match="label 5, beyond its 3 classes"):
        Dataset(
            info,
            {s: torch.rand(4, 2) for s in SPLITS},
            {s: torch.tensor([0, 1, 2, 5]) for s in SPLITS},
        )


def test_cli_records_classes_and_trains_a_label_model_on_a_csv(tmp_path, capsys):
    rows = [[i % 5 * 1.0 + 0.01 * i, "ab"[i % 2]] for i in range(40)]
    path = write_csv(tmp_path / "t.csv", ["v", "who"], rows)
    out = tmp_path / "run"
    code = main(
        [
            *TRAIN,
            "--dataset",
            str(path),
            "--label-column",
            "who",
            "--model",
            "cvae",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    d = json.loads((out / "config.json").read_text())
    assert d["dataset_info"]["num_classes"] == 2 and d["dataset_info"]["transform"]["classes"] == [
        "a",
        "b",
    ]
    assert d["data"]["label_column"] == "who" and d["cvae"]["num_classes"] == 2
    emb = tmp_path / "z.csv"
    assert main(["embed", str(out), "--out", str(emb)]) == 0  # reloaded with its labels
    assert emb.read_text().splitlines()[0].endswith(",label")
    assert (
        main(
            [
                *TRAIN,
                "--dataset",
                str(path),
                "--label-column",
                "who",
                "--binarize",
                "threshold",
                "--dequantize",
                "uniform",
                "--out",
                str(tmp_path / "r2"),
            ]
        )
        == 1
    )
    assert "exclude each other" in capsys.readouterr().err


# --- one contract, two implementations, one transform hook ---------------------------------
def test_one_contract_with_two_implementations_and_one_transform(png_folder):
    from aevb.data import Binarize, DataSource

    root, _ = png_folder
    memory = load_dataset(DataConfig(dataset=str(root), binarize="dynamic"))
    disk = load_dataset(
        DataConfig(dataset=str(root), binarize="dynamic", memory_budget_mb=0, num_workers=0)
    )
    for ds in (memory, disk):
        assert isinstance(ds, DataSource) and type(ds.transform) is Binarize
        # the batch plans, the labels and the transform calls are the contract's, written once
        for name in (
            "train_batches",
            "indexed_eval_batches",
            "eval_batches",
            "labels",
            "head_labels",
        ):
            assert getattr(type(ds), name) is getattr(DataSource, name), name
    assert not issubclass(StreamingDataset, Dataset) and not issubclass(Dataset, StreamingDataset)
    with pytest.raises(DataError, match="already transformed"):
        disk.with_transform(Binarize("threshold", 0))


def test_dequantize_draws_each_training_value_in_its_bin(tmp_path, png_folder):
    a = np.random.default_rng(2).integers(0, 256, (60, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", a)
    grid = load_dataset(DataConfig(dataset=str(tmp_path / "u8.npy")))
    ds = load_dataset(DataConfig(dataset=str(tmp_path / "u8.npy"), dequantize="uniform"))
    assert ds.info.transform["dequantize"] == "uniform" and ds.info.likelihood == "gaussian-pixel"
    assert ds.info.value_range[0] < 0 and ds.info.value_range[1] > 1
    assert torch.equal(ds.tensor("valid"), grid.tensor("valid"))  # evaluation keeps the grid
    torch.manual_seed(0)
    noisy = [x for x, _ in ds.train_batches(16, 1, 0)]
    torch.manual_seed(0)
    again = [x for x, _ in ds.train_batches(16, 1, 0)]
    plain = [x for x, _ in grid.train_batches(16, 1, 0)]
    for n, r, p in zip(noisy, again, plain, strict=True):
        assert torch.equal(n, r)  # from the global RNG: a resume draws the same
        offset = (n - p) * 255
        assert offset.abs().max() <= 0.5 and offset.std() > 0.2  # uniform in the bin
    # from disk: the same noise through the same hook
    root, _ = png_folder
    memory = load_dataset(DataConfig(dataset=str(root), dequantize="uniform"))
    disk = load_dataset(
        DataConfig(dataset=str(root), dequantize="uniform", memory_budget_mb=0, num_workers=0)
    )
    torch.manual_seed(5)
    m = [x for x, _ in memory.train_batches(8, 0, 0)]
    torch.manual_seed(5)
    d = [x for x, _ in disk.train_batches(8, 0, 0)]
    assert all(torch.equal(u, v) for u, v in zip(m, d, strict=True))
    with pytest.raises(DataError, match="--dequantize uniform needs 8-bit data"):
        load_dataset(DataConfig(dataset="digits", dequantize="uniform"))  # values k/16
