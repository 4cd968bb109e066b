"""User tables: ``--dataset FILE.csv`` with a header row; ``--columns a,b,c`` picks columns.

Each row is one example ``(D,)`` of the D selected columns (default: every column but the
label column), which must all be numeric: an empty, non-numeric, NaN or infinite value is
an error naming the column and the line. ``--label-column NAME`` takes that column out of
the features and makes it the class labels: integer classes (every value an integer) are
sorted numerically, other values as strings, and class k is the k-th of them; the list is
recorded in ``transform["classes"]`` (label k means ``classes[k]``). Rows are split 80/10/10 from ``--split-seed``; every column is then
standardised, ``(x - mean) / std``, with the mean and standard deviation of the training
split (a constant column gets std 1). The statistics are recorded in
``transform["standardize"]`` (so in the run's ``config.json``), and later commands, which
reload the data from the run's config, recompute them identically. Suggested decoder:
``gaussian-pixel`` (a learned standard deviation per column).
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import CheckpointError, DataError
from .base import Dataset, DatasetInfo, DataSource, split_indices


def read_csv_columns(
    path: Path, columns: str | None, label_column: str | None = None
) -> tuple[list[str], np.ndarray, list[str] | None, list[int]]:
    """The selected columns of a CSV file as ``[N, D]`` float64, and the label column's text.

    Returns:
        ``(column names, values [N, D], label cells [N] or None, line numbers [N])``.

    Raises:
        DataError: unknown column, ragged row, or a value that is not a finite number.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError(f"{path} is empty; a CSV needs a header row naming its columns")
            if label_column is not None and label_column not in header:
                raise DataError(
                    f"{path} has no column {label_column!r} for --label-column; its columns "
                    f"are {header}"
                )
            if columns:
                wanted = [c.strip() for c in columns.split(",") if c.strip()]
                if label_column in wanted:
                    raise DataError(
                        f"--columns names {label_column!r}, the --label-column; the label is "
                        "taken out of the features: leave it out of --columns"
                    )
            else:
                wanted = [c for c in header if c != label_column]
                if not wanted:
                    raise DataError(f"{path} has no column besides the label column")
            unknown = [c for c in wanted if c not in header]
            if unknown:
                raise DataError(f"{path} has no column(s) {unknown}; its columns are {header}")
            if len(set(wanted)) != len(wanted):
                twice = sorted({c for c in wanted if wanted.count(c) > 1})
                if columns:
                    raise DataError(f"--columns names {twice} twice; name each column once")
                raise DataError(
                    f"{path}'s header names column(s) {twice} twice; rename them, or pick "
                    "columns with --columns"
                )
            picks = [header.index(c) for c in wanted]
            label_at = header.index(label_column) if label_column is not None else None
            label_cells: list[str] = []
            values: list[list[str]] = []
            lines: list[int] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {reader.line_num}: {len(row)} fields but the header has "
                        f"{len(header)}; fix the row"
                    )
                values.append([row[i] for i in picks])
                if label_at is not None:
                    label_cells.append(row[label_at].strip())
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{path} is not a valid CSV file ({e})") from None
    if not values:
        raise DataError(f"{path} has a header but no rows")
    cells = np.array(values, dtype=object)
    out = np.empty(cells.shape, dtype=np.float64)
    for j, name in enumerate(wanted):
        out[:, j] = _parse_column(cells[:, j], name, lines, path)
    return wanted, out, (label_cells if label_column is not None else None), lines


def class_indices(
    cells: list[str], name: str, lines: list[int], path: Path
) -> tuple[torch.Tensor, list[int] | list[str]]:
    """Labels ``[N]`` in 0..C-1 from a column's text, and the C classes in label order.

    Integer classes (every cell an integer) are sorted numerically, others as strings:
    ``["3", "1", "3"]`` -> ``[1, 0, 1]`` with classes ``[1, 3]``.

    Raises:
        DataError: an empty label cell (naming its row and line).
    """
    for k, cell in enumerate(cells):
        if not cell:
            raise DataError(
                f"{path}: label column {name!r}, row {k + 1} (line {lines[k]}) is empty; "
                "every row needs a class"
            )
    try:
        values: list = [int(c) for c in cells]
    except ValueError:
        values = list(cells)
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in values], dtype=torch.int64), classes


def _parse_column(cells: np.ndarray, name: str, lines: list[int], path: Path) -> np.ndarray:
    try:
        col = cells.astype(np.float64)
    except ValueError:
        col = None
    if col is not None and np.isfinite(col).all():
        big = float(np.abs(col).max()) if len(col) else 0.0
        if big > 1e30:
            raise DataError(
                f"{path}: column {name!r} holds values up to {big:.3g}, too large to compute "
                "with in float32; rescale the column"
            )
        return col
    for k, cell in enumerate(cells):  # slow path, only to name the offending line
        text = str(cell).strip()
        try:
            v = float(text)
        except ValueError:
            v = None
        if v is None or not math.isfinite(v):
            what = "a missing value" if not text else f"{text!r}, not a finite number"
            raise DataError(
                f"{path}: column {name!r}, row {k + 1} (line {lines[k]}) has {what}; clean or "
                "impute it, or leave the column out with --columns"
            )
    raise AssertionError("unreachable")


def load_csv(path: Path, config: DataConfig) -> Dataset:
    """A CSV table as a dataset of standardised ``(D,)`` vectors (labelled with ``--label-column``)."""
    names, table, label_cells, lines = read_csv_columns(path, config.columns, config.label_column)
    parts = split_indices(
        len(table), config.valid_fraction, config.test_fraction, config.split_seed
    )
    train = table[parts["train"].numpy()]
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std == 0] = 1.0
    x = torch.from_numpy(((table - mean) / std).astype(np.float32))
    splits = {s: x[i] for s, i in parts.items()}
    lo = float(x.min())
    hi = float(x.max())
    transform = {
        "kind": "csv",
        "columns": names,
        "standardize": {"mean": mean.tolist(), "std": std.tolist(), "from": "train split"},
        "split_seed": config.split_seed,
    }
    labels = None
    if label_cells is not None:
        y, classes = class_indices(label_cells, str(config.label_column), lines, path)
        labels = {s: y[i] for s, i in parts.items()}
        transform.update(label_column=config.label_column, classes=classes)
    info = DatasetInfo(
        str(path),
        (len(names),),
        (lo, hi),
        labels is not None,
        "gaussian-pixel",
        f"{len(table)} rows of {path.name}, columns {', '.join(names)}, standardised",
        transform,
        len(classes) if labels is not None else None,
    )
    return Dataset(info, splits, labels)


logger = logging.getLogger("aevb")


def restandardize(ds: DataSource, recorded: dict) -> DataSource:
    """Express a re-read table in the units the model was trained in.

    Later commands re-read a run's CSV; if the file changed since training, its own
    statistics differ from those recorded in ``config.json``. The examples are then
    standardised with the recorded mean and standard deviation (what the model expects),
    with a warning when a column's mean moved by more than 0.1 recorded standard deviations
    or its spread changed by more than 20 %.
    """
    rec = recorded.get("standardize") if isinstance(recorded, dict) else None
    now = ds.info.transform.get("standardize")
    if rec and "classes" in recorded and recorded["classes"] != ds.info.transform.get("classes"):
        raise DataError(
            f"{ds.info.name}'s label column now has the classes "
            f"{ds.info.transform.get('classes')}, but the run was trained with "
            f"{recorded['classes']}; labels would mean other classes"
        )
    if (
        not rec
        or not now
        or rec.get("mean") == now.get("mean")
        and rec.get("std") == now.get("std")
    ):
        return ds
    try:  # the run's config.json, as recorded (or as damaged since)
        m_rec = np.asarray(rec["mean"], dtype=np.float64)
        s_rec = np.asarray(rec["std"], dtype=np.float64)
        finite = np.isfinite(m_rec).all() and np.isfinite(s_rec).all()
        usable = m_rec.shape == s_rec.shape and finite and (s_rec > 0).all()
    except (KeyError, TypeError, ValueError):
        usable = False
    if not usable:
        raise CheckpointError(
            "the run's config.json is corrupt (its dataset_info.transform.standardize is not a "
            "mean and a positive std per column); restore the file, or retrain"
        )
    m_now, s_now = np.asarray(now["mean"]), np.asarray(now["std"])
    if m_rec.shape != m_now.shape:
        raise DataError(
            f"{ds.info.name} has {m_now.size} columns but the run was trained on {m_rec.size}"
        )
    shift = np.abs(m_now - m_rec) / s_rec
    ratio = s_now / s_rec
    moved = [
        c
        for c, sh, r in zip(ds.info.transform.get("columns", []), shift, ratio, strict=False)
        if sh > 0.1 or not 0.8 <= r <= 1.25
    ]
    if moved:
        logger.warning(
            "%s changed since training: column(s) %s have other statistics than recorded; "
            "they are standardised with the recorded ones, as the model expects",
            ds.info.name,
            ", ".join(moved),
        )
    scale = torch.from_numpy((s_now / s_rec).astype(np.float32))
    offset = torch.from_numpy(((m_now - m_rec) / s_rec).astype(np.float32))
    splits = {s: ds.tensor(s) * scale + offset for s in ("train", "valid", "test")}
    labels = {s: y for s in ("train", "valid", "test") if (y := ds.labels(s)) is not None}
    info = replace(
        ds.info,
        value_range=(
            min(float(x.min()) for x in splits.values()),
            max(float(x.max()) for x in splits.values()),
        ),
        transform={**ds.info.transform, "standardize": rec},
    )
    return Dataset(info, splits, labels or None)
