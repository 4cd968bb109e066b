"""User tables: ``--dataset FILE.csv`` with a header row; ``--columns a,b,c`` picks columns.

Each row is one example ``(D,)`` of the D selected columns (default: every column), which
must all be numeric: an empty, non-numeric, NaN or infinite value is an error naming the
column and the line. Rows are split 80/10/10 from ``--split-seed``; every column is then
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
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import CheckpointError, DataError
from .base import Dataset, DatasetInfo, split_indices


def read_csv_columns(path: Path, columns: str | None) -> tuple[list[str], np.ndarray]:
    """The selected columns of a CSV file as ``[N, D]`` float64.

    Raises:
        DataError: unknown column, ragged row, or a value that is not a finite number.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if not any(header):
                raise DataError(f"{path} is empty; a CSV needs a header row naming its columns")
            wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else header
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
    return wanted, out


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
    """A CSV table as a dataset of standardised ``(D,)`` vectors."""
    names, table = read_csv_columns(path, config.columns)
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
    info = DatasetInfo(
        str(path),
        (len(names),),
        (lo, hi),
        False,
        "gaussian-pixel",
        f"{len(table)} rows of {path.name}, columns {', '.join(names)}, standardised",
        {
            "kind": "csv",
            "columns": names,
            "standardize": {"mean": mean.tolist(), "std": std.tolist(), "from": "train split"},
            "split_seed": config.split_seed,
        },
    )
    return Dataset(info, splits)


logger = logging.getLogger("aevb")


def restandardize(ds: Dataset, recorded: dict) -> Dataset:
    """Express a re-read table in the units the model was trained in.

    Later commands re-read a run's CSV; if the file changed since training, its own
    statistics differ from those recorded in ``config.json``. The examples are then
    standardised with the recorded mean and standard deviation (what the model expects),
    with a warning when a column's mean moved by more than 0.1 recorded standard deviations
    or its spread changed by more than 20 %.
    """
    rec = recorded.get("standardize") if isinstance(recorded, dict) else None
    now = ds.info.transform.get("standardize")
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
    transform = {**ds.info.transform, "standardize": rec}
    info = DatasetInfo(
        ds.info.name,
        ds.info.shape,
        (
            min(float(x.min()) for x in splits.values()),
            max(float(x.max()) for x in splits.values()),
        ),
        ds.info.has_labels,
        ds.info.likelihood,
        ds.info.description,
        transform,
    )
    return Dataset(info, splits)
