"""Row-local SQL over batches pyarrow decoded: the same rows, in the same order, as DuckDB's own
read of the files; passed columns kept out of DuckDB; filters counted in one pass."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckstream.core.batch_sql import POSITION, BatchSQL, split_query
from duckstream.core.planning import prepare
from duckstream.core.world import World
from duckstream.errors import QueryError
from duckstream.storage import S3Settings
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, stream_batches

QUERIES = [
    "SELECT id, caps[1] AS first, img FROM source",
    "SELECT img, id * 2 AS twice FROM source WHERE id % 3 = 0",
    "SELECT id, UNNEST(caps) AS caption, img FROM source WHERE id < 150",
    "SELECT * FROM source WHERE id >= 40",
    "SELECT upper(caps[2]) AS shout FROM source",
    "SELECT s.img AS picture, s.id FROM source s WHERE id BETWEEN 10 AND 90",
    "SELECT 1 AS one FROM source WHERE id < 5",
    "SELECT id, CASE WHEN id % 2 = 0 THEN 'even' ELSE 'odd' END AS parity, label FROM source",
    "SELECT CAST(id AS VARCHAR) || '-' || label AS tag, octet_length(img) AS size FROM source "
    "WHERE label LIKE 'a%'",
    "SELECT *, id + 1 AS next FROM source WHERE img IS NOT NULL",
    "SELECT id, img FROM source WHERE octet_length(img) > 3",
    "SELECT id FROM (SELECT id, label FROM source WHERE id > 20) WHERE label <> 'b'",
]


def write_source(directory: Path, sizes: list[int], row_group: int) -> None:
    start = 0
    for index, rows in enumerate(sizes):
        ids = list(range(start, start + rows))
        pq.write_table(
            pa.table(
                {
                    "id": pa.array(ids, pa.int64()),
                    "caps": pa.array(
                        [[f"a{i}", f"b{i}"] if i % 7 else [] for i in ids], pa.list_(pa.string())
                    ),
                    "img": pa.array(
                        [bytes([i % 251]) * (i % 9) if i % 5 else None for i in ids], pa.binary()
                    ),
                    "label": pa.array(["abc"[i % 3] for i in ids], pa.string()),
                }
            ),
            directory / f"part-{index:03d}.parquet",
            row_group_size=max(1, row_group),
        )
        start += rows


def duckdb_rows(directory: Path, sql: str) -> list[dict[str, object]]:
    """What DuckDB's own reader gives for the query, in storage order."""
    files = sorted(str(p) for p in directory.glob("*.parquet"))
    with duckdb.connect() as con:
        con.execute(f"CREATE VIEW source AS SELECT * FROM read_parquet({files!r})")
        return con.sql(sql).to_arrow_table().to_pylist()  # type: ignore[no-any-return]


def streamed_rows(source: object, sql: str, **kw: object) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for batch in stream_batches(source, sql, **kw):  # type: ignore[arg-type]
        rows.extend(batch.to_pylist())
    return rows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 200), min_size=1, max_size=4),
    row_group=st.integers(1, 80),
    sql=st.sampled_from(QUERIES),
    batch_size=st.integers(1, 70),
)
def test_every_row_local_query_yields_what_duckdb_yields_in_storage_order(
    sizes: list[int], row_group: int, sql: str, batch_size: int
) -> None:
    if not sum(sizes):
        sizes = [*sizes, 1]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_source(directory, sizes, row_group)
        assert streamed_rows(str(directory), sql, batch_size=batch_size) == duckdb_rows(directory, sql)


@pytest.mark.parametrize("sql", QUERIES)
@pytest.mark.parametrize("even", ["drop", "pad"])
def test_slots_together_yield_every_output_row_once(tmp_path: Path, sql: str, even: str) -> None:
    write_source(tmp_path, [130, 70, 250], 40)
    seen: Counter[str] = Counter()
    for rank in range(2):
        for worker in range(2):
            rows = streamed_rows(
                str(tmp_path),
                sql,
                world=World(rank, 2, worker, 2),
                shuffle=True,
                seed=5,
                even=even,
                batch_size=16,
            )
            seen.update(map(repr, rows))
    want = Counter(map(repr, duckdb_rows(tmp_path, sql)))
    if even == "drop":  # fewer rows left out than there are ranks
        assert not seen - want
        assert sum((want - seen).values()) < 2
    else:  # fewer rows repeated than there are ranks
        assert not want - seen
        assert sum((seen - want).values()) < 2


def test_columns_passed_through_never_enter_duckdb(tmp_path: Path) -> None:
    write_source(tmp_path, [50], 10)
    plan = prepare(str(tmp_path), "SELECT id, caps[1] AS first, img AS picture FROM source", s3=S3Settings())
    assert plan.batch is not None
    assert plan.batch.passed == ("id", None, "img")
    assert plan.batch.reads == ("caps",)  # DuckDB decodes neither id nor img
    assert plan.batch.wide == ("id", "img")
    assert POSITION in plan.batch.sql
    assert "img" not in plan.batch.sql
    assert plan.schema.names == ["id", "first", "picture"]
    assert plan.schema.field("picture").type == pa.binary()


def test_a_float16_column_duckdb_cannot_take_is_passed_in_its_own_type(tmp_path: Path) -> None:
    # pyarrow decodes float16; DuckDB takes no float16 from Arrow. A query that only passes it
    # through (or does not read it) still runs over pyarrow's batches, and yields float16; one
    # that computes on it is read by DuckDB from the files, which gives float32.
    halves = pa.array([i / 4 for i in range(200)], pa.float16())
    pq.write_table(pa.table({"id": pa.array(range(200), pa.int64()), "half": halves}), tmp_path / "a.parquet")
    for sql in (
        "SELECT id FROM source WHERE id % 3 = 0",
        "SELECT id, half FROM source WHERE id % 3 = 0",
        "SELECT half AS h, id + 1 AS next FROM source",
    ):
        plan = prepare(str(tmp_path), sql, s3=S3Settings())
        assert plan.batch is not None, sql
        assert plan.decoded(0), sql
        rows = pa.Table.from_batches(stream_batches(str(tmp_path), sql))
        assert rows.schema == plan.schema
        expected = duckdb.sql(sql.replace("source", f"read_parquet('{tmp_path}/a.parquet')")).to_arrow_table()
        assert rows.cast(expected.schema).equals(expected), sql
        assert [f.type for f in plan.schema if f.name in ("half", "h")] in ([], [pa.float16()]), sql
    computed = prepare(str(tmp_path), "SELECT id FROM source WHERE half > 10", s3=S3Settings())
    assert computed.batch is None
    assert not computed.decoded(0)
    assert [
        b.column("id").to_pylist()
        for b in stream_batches(str(tmp_path), "SELECT id FROM source WHERE half > 10")
    ] == [list(range(41, 200))]


def test_a_column_the_filter_reads_is_still_passed(tmp_path: Path) -> None:
    write_source(tmp_path, [50], 10)
    with duckdb.connect() as con:
        schema = pq.read_schema(next(tmp_path.glob("*.parquet")))
        split = split_query(
            con, "SELECT img FROM source WHERE octet_length(img) > 3", schema, keeps_rows=False
        )
    assert split.passed == ("img",)
    assert split.reads == ("img",)
    assert split.wide == ()  # DuckDB reads it anyway: taken from its input, not decoded twice


def test_a_selective_filter_plans_only_the_row_groups_that_match(tmp_path: Path) -> None:
    write_source(tmp_path, [1000, 1000], 50)  # ids sorted: row group statistics tell
    plan = prepare(str(tmp_path), "SELECT id, img FROM source WHERE id < 20", s3=S3Settings())
    assert plan.num_rows == 20
    assert sum(s.rows for s in plan.shards) == 50  # one row group of 40 read, not 2,000 rows
    assert streamed_rows(str(tmp_path), "SELECT id FROM source WHERE id < 20") == [
        {"id": i} for i in range(20)
    ]
    late = prepare(str(tmp_path), "SELECT id FROM source WHERE id >= 1990 OR id = 3", s3=S3Settings())
    assert [(s.file, s.start, s.stop) for s in late.shards] == [(0, 0, 50), (1, 950, 1000)]
    assert late.counts.tolist() == [1, 10]


def test_a_filter_that_matches_nothing_plans_an_empty_stream(tmp_path: Path) -> None:
    write_source(tmp_path, [100], 10)
    plan = prepare(str(tmp_path), "SELECT id FROM source WHERE id < 0", s3=S3Settings())
    assert len(plan.shards) == 0
    assert plan.num_rows == 0
    assert streamed_rows(str(tmp_path), "SELECT id FROM source WHERE id < 0") == []


def test_errors_in_the_query_name_the_statement_before_any_read(tmp_path: Path) -> None:
    write_source(tmp_path, [10], 10)
    with pytest.raises(QueryError, match="nope"):
        prepare(str(tmp_path), "SELECT nope + 1 FROM source", s3=S3Settings())
    with pytest.raises(QueryError, match="caps"):
        # binds, but fails on the first row: the error still names the statement
        streamed_rows(str(tmp_path), "SELECT CAST(label AS INTEGER) + len(caps) AS n FROM source")


def test_duckdb_takes_fewer_rows_at_once_when_it_reads_wide_values(tmp_path: Path) -> None:
    ids = list(range(200))
    pq.write_table(
        pa.table(
            {"id": pa.array(ids, pa.int64()), "img": pa.array([os.urandom(40_000) for _ in ids], pa.binary())}
        ),
        tmp_path / "wide.parquet",
    )
    narrow = prepare(str(tmp_path), "SELECT id + 1 AS next, img FROM source", s3=S3Settings())
    wide = prepare(str(tmp_path), "SELECT octet_length(img) AS size FROM source", s3=S3Settings())
    assert narrow.sql_batch_rows == 65_536  # 8 bytes a row: as many as allowed
    assert wide.sql_batch_rows == 1_024  # 40 KB a row: the least, not 16 MiB / 40 KB rounded up
    assert [
        r["size"] for r in streamed_rows(str(tmp_path), "SELECT octet_length(img) AS size FROM source")
    ] == [40_000] * 200


@pytest.mark.parametrize("shuffle", [False, True])
def test_wide_values_a_filter_selects_arrive_whole_and_in_their_own_type(
    tmp_path: Path, shuffle: bool
) -> None:
    ids = list(range(300))
    images = [os.urandom(1_000 + i) for i in ids]
    pq.write_table(
        pa.table({"id": pa.array(ids, pa.int64()), "img": pa.array(images, pa.binary())}),
        tmp_path / "images.parquet",
        row_group_size=70,
    )
    sql = "SELECT img, id FROM source WHERE id % 3 = 0 OR id > 280"
    batches = list(stream_batches(str(tmp_path), sql, batch_size=16, shuffle=shuffle, shuffle_buffer=50))
    assert all(b.schema == pa.schema([("img", pa.binary()), ("id", pa.int64())]) for b in batches)
    rows = [(r["id"], r["img"]) for b in batches for r in b.to_pylist()]
    want = [(i, images[i]) for i in ids if i % 3 == 0 or i > 280]
    assert (sorted(rows) if shuffle else rows) == want


def test_sql_over_decoded_batches_through_loader_workers(tmp_path: Path) -> None:
    write_source(tmp_path, [130, 70, 250], 40)
    sql = "SELECT id, caps[1] AS first, img FROM source WHERE id % 3 <> 1"
    dataset = DuckStreamDataset(str(tmp_path), sql=sql, batch_size=16, shuffle=True, seed=2, output="arrow")
    assert dataset.plan.batch is not None
    rows = [r for b in DuckStreamLoader(dataset, num_workers=2) for r in b.to_pylist()]
    assert sorted(rows, key=lambda r: r["id"]) == duckdb_rows(tmp_path, sql)  # ids ascend in storage order


@pytest.mark.parametrize("buffer", [60, 1_000])
def test_a_shuffled_query_that_keeps_rows_runs_once_a_window(
    tmp_path: Path, buffer: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripes of many pieces make up a window: DuckDB runs over the window, not each stripe."""
    write_source(tmp_path, [130, 70, 250, 90], 20)
    sql = "SELECT id, caps[1] AS first, img, upper(label) AS shout FROM source"
    runs: list[int] = []
    run = BatchSQL._run

    def counted(self: BatchSQL, rows: pa.Table) -> pa.Table:
        runs.append(rows.num_rows)
        return run(self, rows)

    monkeypatch.setattr(BatchSQL, "_run", counted)
    rows = streamed_rows(str(tmp_path), sql, batch_size=16, shuffle=True, seed=4, shuffle_buffer=buffer)
    assert sorted(rows, key=lambda r: str(r["id"]).zfill(4)) == duckdb_rows(tmp_path, sql)
    windows = -(-540 // buffer)
    assert len(runs) == windows
    assert sum(runs) == 540
