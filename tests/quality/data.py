"""Small Parquet datasets with nulls, strings, lists, dates and a nested column, for the quality tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def mixed_table(rows: int = 60) -> pa.Table:
    """``rows`` rows: ids with repeats and nulls, floats, labels, ragged lists, dates, a struct."""
    ids = [None if i % 7 == 3 else i // 2 for i in range(rows)]
    return pa.table(
        {
            "imgid": pa.array(ids, pa.int64()),
            "score": pa.array([None if i % 5 == 0 else i * 0.25 - 3 for i in range(rows)], pa.float64()),
            "split": pa.array(
                [None if i % 11 == 0 else ("val" if i % 3 == 0 else "train") for i in range(rows)]
            ),
            "caption": pa.array([" ".join(["w"] * (i % 6)) for i in range(rows)], pa.string()),
            "tokens": pa.array(
                [None if i % 9 == 0 else list(range(i % 4)) for i in range(rows)], pa.list_(pa.int32())
            ),
            "day": pa.array(
                [dt.date(2024, 1, 1) + dt.timedelta(days=i % 30) for i in range(rows)], pa.date32()
            ),
            "flag": pa.array([i % 4 == 0 for i in range(rows)], pa.bool_()),
            "meta": pa.array([{"w": i, "h": i + 1} for i in range(rows)]),
        }
    )


def write_parts(directory: Path, table: pa.Table, parts: int = 3) -> Path:
    """``table`` split over ``parts`` files in ``directory``; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    step = -(-table.num_rows // parts)
    for index in range(parts):
        pq.write_table(table.slice(index * step, step), directory / f"part-{index}.parquet", row_group_size=8)
    return directory
