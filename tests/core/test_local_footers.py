"""Footers of local files kept between reads: used only while the file is unchanged."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.core import local_footers
from duckstream.stream import stream_batches


def write(path: Path, first: int, rows: int = 400) -> None:
    table = pa.table({"id": pa.array(range(first, first + rows), pa.int64()), "tag": [f"t{first}"] * rows})
    pq.write_table(table, path, row_group_size=100)


def test_a_footer_is_kept_while_its_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    write(path, 0)
    metadata = pq.read_metadata(path)
    local_footers.remember(str(path), metadata)
    assert local_footers.footer(str(path)) is metadata
    write(path, 0, rows=500)
    assert local_footers.footer(str(path)) is None
    assert local_footers.footer(str(tmp_path / "missing.parquet")) is None


def test_a_file_rewritten_between_epochs_is_read_with_its_new_footer(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    write(path, 0)
    options: dict[str, Any] = {"shuffle": True, "batch_size": 50, "shuffle_buffer": 64}
    first = [i for batch in stream_batches(tmp_path, **options) for i in batch.column("id").to_pylist()]
    assert sorted(first) == list(range(400))
    # The same rows and row groups, other values (and a longer string column): the footer's
    # page offsets differ. A later modification time, even on a coarse clock.
    write(path, 1_000)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = [i for batch in stream_batches(tmp_path, **options) for i in batch.column("id").to_pylist()]
    assert sorted(again) == list(range(1_000, 1_400))
