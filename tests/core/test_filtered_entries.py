"""A filtering (or unnesting) query counted per row group: a read of rows ``lo..hi`` of a
shard starts at the row group that yields row ``lo``, and the read order may enter a shard
wherever one of its row groups starts, as it does without a filter."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duckstream.core.planning import prepare
from duckstream.core.reader import ShardReader
from duckstream.core.shards import RowGroups, Shard, ShardTable, starts_inside
from duckstream.storage import S3Settings
from tests.conftest import numbers_table
from tests.core.test_pipeline import write_files


def queries(modulus: int, remainder: int) -> list[str]:
    return [
        f"SELECT id, value FROM source WHERE id % {modulus} = {remainder}",
        f"SELECT id, value + 1 AS more FROM source WHERE id % {modulus} <> {remainder} AND value >= 0",
        f"SELECT id, unnest(range(id % {modulus})) AS k FROM source",
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(1, 90), min_size=1, max_size=4),
    row_group=st.integers(1, 25),
    modulus=st.integers(2, 40),
    remainder=st.integers(0, 39),
    which=st.integers(0, 2),
    shard_rows=st.sampled_from([1, 30, 65_536]),
    cuts=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=6),
)
# A filter that keeps every row: its counts per row group are still where row groups start.
@example(sizes=[2], row_group=1, modulus=3, remainder=2, which=1, shard_rows=30, cuts=[(0.0, 0.5)])
def test_any_rows_of_a_filtered_shard_are_read_from_the_row_group_that_yields_the_first(
    sizes: list[int],
    row_group: int,
    modulus: int,
    remainder: int,
    which: int,
    shard_rows: int,
    cuts: list[tuple[float, float]],
) -> None:
    sql = queries(modulus, remainder % modulus)[which]
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp), sizes, row_group)
        plan = prepare(tmp, sql, s3=S3Settings(), shard_rows=shard_rows)
        assert not plan.narrow
        layout = plan.layout
        reader = ShardReader(plan, threads=1)
        try:
            for index, shard in enumerate(plan.shards):
                whole = pa.Table.from_batches(reader.read(shard, 0, int(plan.counts[index])), plan.schema)
                # What DuckDB gives for the shard's rows: the reference.
                expected = _duckdb_rows(plan.files[shard.file], sql, shard)
                assert whole.to_pylist() == expected
                # The read order's entries: where the shard's row groups start, in rows it yields.
                groups = np.cumsum([0, *plan.row_groups[shard.file]])
                inside = groups[(groups > shard.start) & (groups < shard.stop)]
                before = [
                    len(_duckdb_rows(plan.files[shard.file], sql, Shard(shard.file, shard.start, int(g))))
                    for g in inside
                ]
                assert layout.entries[index].tolist() == sorted({b for b in before if b > 0})
                for a, b in cuts:
                    lo, hi = sorted((int(a * len(expected)), int(b * len(expected))))
                    part = pa.Table.from_batches(reader.read(shard, lo, hi), plan.schema)
                    assert part.to_pylist() == expected[lo:hi], (lo, hi)
        finally:
            reader.close()


def _duckdb_rows(path: str, sql: str, shard: Shard) -> list[dict[str, object]]:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(
            "CREATE VIEW source AS SELECT * EXCLUDE (file_row_number) "
            f"FROM read_parquet('{path}', file_row_number = true) "
            f"WHERE file_row_number >= {shard.start} AND file_row_number < {shard.stop}"
        )
        return con.sql(sql).to_arrow_table().to_pylist()  # type: ignore[no-any-return]
    finally:
        con.close()


def test_row_groups_that_yield_nothing_add_no_entry() -> None:
    groups = RowGroups.of([[3, 3, 3, 3, 3]])
    yields = RowGroups.of([[2, 0, 0, 1, 3]])
    shards = ShardTable.of([Shard(0, 0, 15), Shard(0, 3, 15), Shard(0, 3, 12)])
    flat, bounds = starts_inside(shards, groups, np.array([True, True, True]), yields)
    assert flat[bounds[0] : bounds[1]].tolist() == [2, 3]  # groups 1 and 2 start at 2, group 4 at 3
    assert flat[bounds[1] : bounds[2]].tolist() == [1]  # from group 1: groups 2, 3 at 0, group 4 at 1
    assert flat[bounds[2] : bounds[3]].tolist() == []


def test_an_unfiltered_plan_keeps_no_yields(tmp_path: Path) -> None:
    write_files(tmp_path, [50, 20], 10)
    assert prepare(tmp_path, "SELECT id FROM source", s3=S3Settings()).yields is None
    assert prepare(tmp_path, "SELECT id * 2 AS twice FROM source", s3=S3Settings()).yields is None
    filtered = prepare(tmp_path, "SELECT id FROM source WHERE id % 3 = 0", s3=S3Settings())
    assert filtered.yields == RowGroups.of([[4, 3, 3, 4, 3], [3, 4]])


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_filtered_stream_enters_row_groups_and_reads_each_row_once(tmp_path: Path, shuffle: bool) -> None:
    from duckstream.stream import stream_batches

    write_files(tmp_path, [3_000, 1_000], 250)
    sql = "SELECT id FROM source WHERE id % 3 = 1"
    plan = prepare(tmp_path, sql, s3=S3Settings())
    assert (
        sum(len(plan.layout.entries[i]) for i in range(len(plan.shards))) == 14
    )  # 11 + 3 row groups start inside the two shards
    ids = [
        i
        for b in stream_batches(tmp_path, sql, shuffle=shuffle, shuffle_buffer=256, seed=3)
        for i in b.column("id").to_pylist()
    ]
    assert sorted(ids) == [i for i in range(4_000) if i % 3 == 1]


@pytest.mark.parametrize(
    "sql",
    [
        None,
        "SELECT id, value FROM source WHERE id % 7 = 2",
        "SELECT id, unnest(range(id % 3)) AS k FROM source",
    ],
)
def test_a_lake_file_with_deletes_is_entered_where_its_row_groups_start(
    tmp_path: Path, sql: str | None
) -> None:
    from duckstream.catalog import LakehouseCatalog

    rows = numbers_table(0, 1_000).drop_columns(["vector"])
    pq.write_table(rows, tmp_path / "outside.parquet", row_group_size=64)
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as cat:
        cat.con.execute("CREATE TABLE t (id BIGINT, value DOUBLE, label VARCHAR)")
        cat.con.execute(f"CALL ducklake_add_data_files('lake', 't', '{tmp_path / 'outside.parquet'}')")
        cat.con.execute("DELETE FROM t WHERE id % 11 = 0 OR id BETWEEN 130 AND 200")
        table = cat.table("t")
        plan = prepare(table, sql, s3=table.s3)
        assert plan.lake is not None
        assert all(plan.lake.direct)
        assert all(plan.lake.deletes)
        assert plan.yields is not None
        query = (sql or "SELECT * FROM source").replace(
            "FROM source", f"FROM t AT (VERSION => {table.version})"
        )
        expected = cat.con.execute(query).to_arrow_table().to_pylist()
    reader = ShardReader(plan, threads=1)
    try:
        got: list[dict[str, object]] = []
        rng = np.random.default_rng(0)
        for index, shard in enumerate(plan.shards):
            count = int(plan.counts[index])
            whole = pa.Table.from_batches(reader.read(shard, 0, count), plan.schema).to_pylist()
            got.extend(whole)
            assert len(plan.layout.entries[index]) > 0
            for _ in range(20):
                lo, hi = sorted(rng.integers(0, count + 1, size=2).tolist())
                part = pa.Table.from_batches(reader.read(shard, lo, hi), plan.schema).to_pylist()
                assert part == whole[lo:hi], (lo, hi)
        assert got == expected
    finally:
        reader.close()
