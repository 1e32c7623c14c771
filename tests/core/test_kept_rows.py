"""A filter's kept rows, remembered from one epoch to the next: the same rows out, no DuckDB
query once they are known, and never more than the budget."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from duckstream.core import batch_sql, kept_rows
from duckstream.stream import stream_batches
from tests.conftest import numbers_table


@pytest.fixture(autouse=True)
def nothing_kept() -> Iterator[None]:
    kept_rows.forget()
    yield
    kept_rows.forget()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    for index in range(3):
        pq.write_table(
            numbers_table(index * 1_000, (index + 1) * 1_000),
            tmp_path / f"part-{index}.parquet",
            row_group_size=300,
        )
    return tmp_path


def epoch(source: Path, sql: str, epoch: int) -> list[dict[str, object]]:
    batches = stream_batches(
        source, sql, shuffle=True, seed=5, epoch=epoch, shuffle_buffer=200, batch_size=64
    )
    return [row for batch in batches for row in batch.to_pylist()]


def duckdb_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    runs: list[int] = []
    run = batch_sql.BatchSQL._duckdb

    def counted(self: batch_sql.BatchSQL, batch: pa.RecordBatch) -> pa.RecordBatch:
        runs.append(batch.num_rows)
        return run(self, batch)

    monkeypatch.setattr(batch_sql.BatchSQL, "_duckdb", counted)
    return runs


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, label, vector FROM source WHERE id % 7 IN (1, 2) OR value > 1400",
        "SELECT * FROM source WHERE label LIKE 'odd%' AND id % 5 <> 0",
    ],
)
def test_a_filter_known_from_the_last_epoch_gives_the_same_rows_without_duckdb(
    source: Path, sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = duckdb_runs(monkeypatch)
    first = [epoch(source, sql, e) for e in range(3)]
    assert runs
    runs.clear()
    again = [epoch(source, sql, e) for e in range(3)]
    assert runs == []
    assert again == first
    # What a process that knows nothing reads.
    kept_rows.forget()
    assert [epoch(source, sql, e) for e in reversed(range(3))] == first[::-1]
    where = sql[sql.index("WHERE") :]
    expected = duckdb.sql(f"SELECT id FROM read_parquet('{source}/*.parquet') {where}").fetchall()
    assert sorted(r["id"] for r in first[1]) == sorted(i for (i,) in expected)  # type: ignore[type-var]


def test_a_file_rewritten_in_place_with_as_many_kept_rows_is_filtered_anew(tmp_path: Path) -> None:
    # The same rows in reverse: as many rows and kept rows in every row group, so the plan is
    # the same; only the file's size and time say that the kept positions are not.
    path = tmp_path / "part-0.parquet"
    pq.write_table(numbers_table(0, 1_000), path, row_group_size=250)
    sql = "SELECT id FROM source WHERE id % 2 = 0"
    assert sorted(r["id"] for r in epoch(tmp_path, sql, 0)) == list(range(0, 1_000, 2))  # type: ignore[type-var]
    pq.write_table(numbers_table(0, 1_000).take(list(range(999, -1, -1))), path, row_group_size=250)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a coarse clock
    assert sorted(r["id"] for r in epoch(tmp_path, sql, 0)) == list(range(0, 1_000, 2))  # type: ignore[type-var]


def test_a_query_that_computes_columns_runs_in_duckdb_every_epoch(
    source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = duckdb_runs(monkeypatch)
    sql = "SELECT id, value * 2 AS twice FROM source WHERE id % 3 = 0"
    first = epoch(source, sql, 0)
    count = len(runs)
    assert epoch(source, sql, 0) == first
    assert len(runs) == 2 * count


def test_groups_past_the_budget_are_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path
    for index in range(3):
        pq.write_table(
            numbers_table(index * 900, (index + 1) * 900),
            source / f"part-{index}.parquet",
            row_group_size=300,
        )
    # Room for one group's bits (a row group of 300 rows: 38 bytes), not two.
    monkeypatch.setattr(kept_rows, "KEPT_BYTES", 50)
    runs = duckdb_runs(monkeypatch)
    sql = "SELECT id FROM source WHERE id % 2 = 0"
    first = epoch(source, sql, 0)
    groups = len(runs)
    assert groups > 2
    assert epoch(source, sql, 0) == first
    assert len(runs) == 2 * groups - 1
    positions = np.flatnonzero(np.arange(300) % 2 == 0)
    kept_rows.remember(("other",), positions, 300)
    assert kept_rows.kept(("other",)) is None
