"""Pinned lake tables read straight from their Parquet files where DuckLake allows it: at every
snapshot of a table's history (deletes, inlined rows, renames, added files, compaction, added
columns) the stream is exactly the catalog's own scan, on the embedded and PostgreSQL + S3 lakes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from duckstream.benchmarks.shuffle_quality import spearman

from duckstream.catalog import LakehouseCatalog
from duckstream.core.late_filter import Count
from duckstream.core.pipeline import read_streams
from duckstream.core.planning import prepare
from duckstream.core.world import World
from duckstream.errors import CatalogError
from duckstream.services import PostgresService, S3Service
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, stream_batches
from tests.conftest import ShardReads, check_heads_kept, upload_dir

QUERIES = [
    None,
    "SELECT imgid, split FROM source",
    "SELECT imgid * 2 AS twice, * FROM source WHERE imgid % 3 = 1",
    "SELECT imgid, UNNEST([1, 2]) AS k FROM source WHERE imgid < 400",
]


@dataclass
class Lake:
    open: Callable[[], LakehouseCatalog]
    extra: str  # a Parquet file outside the lake, to add to a table


def captions(start: int, stop: int) -> pa.Table:
    ids = list(range(start, stop))
    return pa.table(
        {
            "imgid": pa.array(ids, pa.int64()),
            "split": pa.array(["val" if i % 10 == 0 else "train" for i in ids], pa.string()),
            "caption": pa.array([" ".join(["word"] * (3 + i % 9)) for i in ids], pa.string()),
        }
    )


@pytest.fixture(params=["embedded", "postgres-s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    raw = tmp_path / "raw"
    raw.mkdir()
    # Added after the table's `caption` became `text`: its names are the table's then.
    pq.write_table(captions(5000, 5040).rename_columns(["imgid", "split", "text"]), raw / "extra.parquet")
    if request.param == "embedded":
        yield Lake(
            lambda: LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files"),
            str(raw / "extra.parquet"),
        )
        return
    s3: S3Service = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    pg: PostgresService = request.getfixturevalue("postgres_server")
    database: str = request.getfixturevalue("pg_database")
    upload_dir(s3.boto3_client(), bucket, "raw", raw)
    yield Lake(
        lambda: LakehouseCatalog(
            pg.dsn(database), f"s3://{bucket}/lake", s3.endpoint, s3.access_key, s3.secret_key
        ),
        f"s3://{bucket}/raw/extra.parquet",
    )


def history(cat: LakehouseCatalog, extra: str) -> list[tuple[str, int]]:
    """Write a table through the changes DuckLake can make; each step's snapshot."""
    steps = [
        ("create", "CREATE TABLE t AS SELECT * FROM captions_src"),
        (
            "insert a file",
            "INSERT INTO t SELECT imgid + 1000, split, caption FROM captions_src WHERE imgid < 300",
        ),
        ("insert inlined rows", "INSERT INTO t VALUES (7000, 'train', 'inlined'), (7001, 'val', 'inlined')"),
        ("delete a few rows", "DELETE FROM t WHERE imgid % 97 = 0"),
        ("delete a range", "DELETE FROM t WHERE imgid BETWEEN 600 AND 700"),
        ("rename a column", "ALTER TABLE t RENAME COLUMN caption TO text"),
        (
            "insert after the rename",
            "INSERT INTO t SELECT imgid + 2000, split, caption FROM captions_src WHERE imgid < 200",
        ),
        ("add a file from outside", f"CALL ducklake_add_data_files('lake', 't', '{extra}')"),
        ("compact", "CALL ducklake_merge_adjacent_files('lake')"),
        ("add a column", "ALTER TABLE t ADD COLUMN quality DOUBLE"),
        (
            "insert with it",
            "INSERT INTO t SELECT imgid + 3000, split, caption, 0.5 FROM captions_src WHERE imgid < 100",
        ),
    ]
    snapshots = []
    for name, sql in steps:
        write_table(cat, sql)
        snapshots.append((name, cat.table("t").version))
    return snapshots


def write_table(cat: LakehouseCatalog, *statements: str, rows: int = 1000) -> None:
    """Run ``statements`` with ``captions_src`` (``rows`` caption rows) at hand."""
    cat.con.register("captions_src", captions(0, rows))
    try:
        for statement in statements:
            cat.con.execute(statement)
    finally:
        cat.con.unregister("captions_src")


def catalog_rows(cat: LakehouseCatalog, version: int, sql: str | None) -> list[dict[str, object]]:
    query = (sql or "SELECT * FROM source").replace("FROM source", f"FROM t AT (VERSION => {version})")
    return cat.con.execute(query).to_arrow_table().to_pylist()  # type: ignore[no-any-return]


def streamed(source: object, sql: str | None, **kw: object) -> list[dict[str, object]]:
    return [row for batch in stream_batches(source, sql, **kw) for row in batch.to_pylist()]  # type: ignore[arg-type]


@pytest.mark.slow
def test_every_snapshot_streams_what_the_catalog_scans_in_its_order(lake: Lake) -> None:
    with lake.open() as cat:
        snapshots = history(cat, lake.extra)
        seen_direct = seen_catalog = seen_deletes = seen_renames = False
        for step, version in snapshots:
            table = cat.table("t", version=version)
            for sql in QUERIES:
                assert streamed(table, sql, batch_size=64) == catalog_rows(cat, version, sql), (step, sql)
            plan = prepare(table, None, s3=table.s3)
            assert plan.lake is not None
            seen_direct |= any(plan.lake.direct)
            seen_catalog |= not all(plan.lake.direct)
            seen_deletes |= any(
                d is not None for d, on in zip(plan.lake.deletes, plan.lake.direct, strict=True) if on
            )
            seen_renames |= any(r for r, on in zip(plan.lake.renames, plan.lake.direct, strict=True) if on)
        # The history took every path: files read directly (with deletes, under old column
        # names) and files only the catalog's scan reads right (inlined rows, compaction).
        assert seen_direct
        assert seen_catalog
        assert seen_deletes
        assert seen_renames


@pytest.mark.slow
def test_files_only_the_catalog_scan_reads_are_shuffled_side_by_side_each_row_once(lake: Lake) -> None:
    # Snapshots with files only DuckLake's scan reads right (inlined rows, a column added
    # since, compaction): a shuffled read takes their pieces several at once, each a query
    # through a cursor of one database the read shares, and the ranks' workers together
    # still yield each row of the snapshot once, on the catalog file and on PostgreSQL + S3.
    with lake.open() as cat:
        seen_catalog = False
        for step, version in history(cat, lake.extra):
            table = cat.table("t", version=version)
            plan = prepare(table, None, s3=table.s3)
            assert plan.lake is not None
            if all(plan.lake.direct):
                continue
            seen_catalog = True
            assert read_streams(plan) > 1
            for sql in QUERIES[:3]:
                rows = [
                    row
                    for rank in range(2)
                    for worker in range(2)
                    for row in streamed(
                        table,
                        sql,
                        batch_size=16,
                        shuffle=True,
                        seed=3,
                        shuffle_buffer=50,
                        even="split",
                        world=World(rank, 2, worker, 2),
                    )
                ]
                want = catalog_rows(cat, version, sql)
                assert sorted(rows, key=repr) == sorted(want, key=repr), (step, sql)
                assert rows != want, (step, sql)  # shuffled, not the scan's order
        assert seen_catalog


def test_plain_files_of_a_table_are_read_directly(lake: Lake) -> None:
    with lake.open() as cat:
        write_table(
            cat,
            "CREATE TABLE t AS SELECT * FROM captions_src",
            "INSERT INTO t SELECT imgid + 1000, split, caption FROM captions_src",
            "DELETE FROM t WHERE imgid % 10 = 3",
        )
        table = cat.table("t")
        plan = prepare(table, "SELECT imgid, caption FROM source", s3=table.s3)
        assert plan.lake is not None
        assert all(plan.lake.direct)
        assert plan.columns == ("imgid", "caption")
        assert all(plan.lake.deletes)
        assert plan.num_rows == 1800
        seen: Counter[int] = Counter()
        for rank in range(2):
            for worker in range(3):
                for row in streamed(
                    table,
                    "SELECT imgid FROM source",
                    world=World(rank, 2, worker, 3),
                    shuffle=True,
                    even="drop",
                ):
                    seen[int(row["imgid"])] += 1  # type: ignore[call-overload]
        assert seen == Counter(i for i in range(2000) if i % 10 != 3)


def test_a_filtered_table_counts_in_one_pass_and_skips_empty_row_groups(lake: Lake) -> None:
    with lake.open() as cat:
        # Four files of 250 sorted ids: the filter's rows lie in the last one alone.
        write_table(
            cat,
            "CREATE TABLE t AS SELECT * FROM captions_src WHERE imgid < 250",
            *(
                f"INSERT INTO t SELECT * FROM captions_src WHERE imgid >= {lo} AND imgid < {lo + 250}"
                for lo in (250, 500, 750)
            ),
        )
        table = cat.table("t")
        everything = prepare(table, None, s3=table.s3)
        few = prepare(table, "SELECT imgid FROM source WHERE imgid >= 990", s3=table.s3)
        assert few.num_rows == 10
        assert sum(s.rows for s in everything.shards) == 1000
        assert sum(s.rows for s in few.shards) == 250  # the files that yield nothing are never read
        assert [r["imgid"] for r in streamed(table, "SELECT imgid FROM source WHERE imgid >= 990")] == list(
            range(990, 1000)
        )


def test_resume_through_the_loader_on_a_table_with_deletes(lake: Lake) -> None:
    with lake.open() as cat:
        write_table(cat, "CREATE TABLE t AS SELECT * FROM captions_src", "DELETE FROM t WHERE imgid % 7 = 0")
        table = cat.table("t")
        dataset = DuckStreamDataset(
            table, sql="SELECT imgid FROM source", batch_size=32, shuffle=True, seed=3, output="arrow"
        )
        loader = DuckStreamLoader(dataset)
        first: list[int] = []
        for index, batch in enumerate(loader):
            first.extend(batch.column("imgid").to_pylist())
            if index == 9:
                break
        state = loader.state_dict()
        again = DuckStreamLoader(
            DuckStreamDataset(
                table, sql="SELECT imgid FROM source", batch_size=32, shuffle=True, seed=3, output="arrow"
            )
        )
        again.load_state_dict(state)
        rest = [i for batch in again for i in batch.column("imgid").to_pylist()]
        assert Counter(first + rest) == Counter(i for i in range(1000) if i % 7)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_table_with_deletes_cut_into_parts_side_by_side_hands_each_kept_row_once(
    lake: Lake, workers: int
) -> None:
    # One data file of one row group, a 100-row buffer: the file is one small shard, cut into
    # parts read side by side, each from a row of its own, which slice the row group decoded
    # once (core.shared_groups); the snapshot's deletes apply to each part's own rows.
    with lake.open() as cat:
        write_table(cat, "CREATE TABLE t AS SELECT * FROM captions_src", "DELETE FROM t WHERE imgid % 7 = 0")
        table = cat.table("t")
        dataset = DuckStreamDataset(
            table,
            sql="SELECT imgid, caption FROM source",
            batch_size=32,
            shuffle=True,
            seed=5,
            shuffle_buffer=100,
            output="arrow",
        )
        rows = [r for b in DuckStreamLoader(dataset, num_workers=workers) for r in b.to_pylist()]
        want = catalog_rows(cat, table.version, "SELECT imgid, caption FROM source")
    assert sorted(rows, key=repr) == sorted(want, key=repr)
    assert len(want) == 1000 - 143


def test_a_data_file_gone_from_under_a_snapshot_is_named(tmp_path: Path) -> None:
    with LakehouseCatalog(tmp_path / "lake.ducklake", tmp_path / "files") as cat:
        write_table(cat, "CREATE TABLE t AS SELECT * FROM captions_src", rows=100)
        table = cat.table("t")
        for path in (tmp_path / "files").rglob("*.parquet"):
            path.unlink()
        with pytest.raises(CatalogError, match="no longer exist"):
            streamed(table, "SELECT imgid FROM source")


def test_deletes_the_catalog_keeps_itself_are_applied_to_files_read_directly(lake: Lake) -> None:
    with lake.open() as cat:
        write_table(
            cat,
            "CREATE TABLE t AS SELECT * FROM captions_src WHERE imgid < 200",
            "INSERT INTO t SELECT * FROM captions_src WHERE imgid >= 200",
            rows=400,
        )
        cat.con.execute("DELETE FROM t WHERE imgid IN (3, 77, 250)")  # a few: kept in the catalog
        pinned = cat.table("t")
        cat.con.execute("DELETE FROM t WHERE imgid = 5")  # later: not the pinned snapshot's
        plan = prepare(pinned, "SELECT imgid, caption FROM source", s3=pinned.s3)
        assert plan.lake is not None
        assert all(plan.lake.direct)
        assert sorted(p for positions in plan.lake.inlined_deletes for p in positions) == [3, 50, 77]
        for sql in (
            None,
            "SELECT imgid, caption FROM source",
            "SELECT imgid FROM source WHERE imgid % 2 = 1",
        ):
            assert streamed(pinned, sql, batch_size=32) == catalog_rows(cat, pinned.version, sql)
        assert [r["imgid"] for r in streamed(pinned, "SELECT imgid FROM source")] == [
            i for i in range(400) if i not in (3, 77, 250)
        ]


def test_workers_read_files_with_deletes_directly_through_sql(lake: Lake) -> None:
    with lake.open() as cat:
        write_table(
            cat,
            "CREATE TABLE t AS SELECT * FROM captions_src",
            "INSERT INTO t SELECT imgid + 1000, split, caption FROM captions_src",
            "DELETE FROM t WHERE imgid % 10 = 3",
        )
        table = cat.table("t")
        sql = "SELECT imgid, length(caption) AS words, split FROM source WHERE split = 'train'"
        dataset = DuckStreamDataset(table, sql=sql, batch_size=64, shuffle=True, seed=4, output="arrow")
        assert dataset.plan.lake is not None
        assert all(dataset.plan.lake.direct)
        rows = [r for b in DuckStreamLoader(dataset, num_workers=2) for r in b.to_pylist()]
        want = catalog_rows(cat, table.version, sql)
    assert sorted(rows, key=repr) == sorted(want, key=repr)


def wide_values(rows: int, *, seed: int) -> list[bytes]:
    """``rows`` random values of 4 KiB."""
    return [
        bytes(v) for v in np.random.default_rng(seed).integers(0, 256, size=(rows, 4_096), dtype=np.uint8)
    ]


def insert_wide(cat: LakehouseCatalog, files: int, blobs: list[bytes]) -> None:
    """A table ``wide (id, blob)`` of ``files`` data files of one row group each (one INSERT a
    file), ids counting up from 0, ``blobs`` the values of each file."""
    cat.con.execute("CREATE TABLE wide (id BIGINT, blob BLOB)")
    per_file = len(blobs)
    for index in range(files):
        ids = pa.array(range(index * per_file, (index + 1) * per_file), pa.int64())
        cat.con.register("part_src", pa.table({"id": ids, "blob": pa.array(blobs, pa.binary())}))
        cat.con.execute("INSERT INTO wide SELECT * FROM part_src")
        cat.con.unregister("part_src")


@pytest.mark.slow
def test_a_table_of_few_large_row_groups_is_read_from_local_copies(lake: Lake, tmp_path: Path) -> None:
    # Two data files of one 9.4 MB row group each, a column renamed since they were written:
    # each is copied once into small row groups (from the store, on the PostgreSQL + S3 lake),
    # under the names the files store, and every row comes once with its own value, near a
    # uniform order, in one process and with two workers.
    per_file = 2_300
    blobs = wide_values(per_file, seed=1)
    with lake.open() as cat:
        insert_wide(cat, 2, blobs)
        cat.con.execute("ALTER TABLE wide RENAME COLUMN blob TO image")
        table = cat.table("wide")

        def make(seed: int) -> DuckStreamDataset:
            return DuckStreamDataset(
                table,
                "SELECT id, image FROM source",
                batch_size=64,
                shuffle=True,
                seed=seed,
                shuffle_buffer=1_000,
                output="arrow",
                cache_dir=tmp_path / "cache",
            )

        assert len(make(0).plan.copied_for(1)) == 2
        rhos = []
        for workers in (0, 2):
            for seed in range(3):
                ids = []
                for batch in DuckStreamLoader(make(seed), num_workers=workers):
                    for row, image in zip(batch["id"].to_pylist(), batch["image"].to_pylist(), strict=True):
                        assert image == blobs[row % per_file]
                        ids.append(row)
                assert sorted(ids) == list(range(2 * per_file))
                rhos.append(spearman(ids))
        assert float(np.median(rhos)) < 0.05, rhos
        assert len(list((tmp_path / "cache").glob("recut-*.parquet"))) == 2


@pytest.mark.slow
def test_a_table_of_few_large_row_groups_with_deletes_is_read_from_copies_once_and_resumed(
    lake: Lake, tmp_path: Path
) -> None:
    # Four data files of one 9.4 MB row group each (one INSERT a file), deletes in one: each is
    # one large piece, too few side by side to mix (rotated in place: |rho| 0.12 median; read
    # whole 0.25). Each is copied into small row groups, the one with deletes too: the plan
    # counts what each part of its row group keeps, and the copy keeps the deleted rows, which
    # the read drops as it does from the file. Every kept row comes once, near a uniform
    # order, and a resume in the middle of the epoch owes the rest.
    per_file = 2_300
    with lake.open() as cat:
        insert_wide(cat, 4, wide_values(per_file, seed=0))
        cat.con.execute(f"DELETE FROM wide WHERE id < {per_file} AND id % 9 = 0")
        table = cat.table("wide")
        kept = [i for i in range(4 * per_file) if i >= per_file or i % 9]

        def make(seed: int) -> DuckStreamDataset:
            return DuckStreamDataset(
                table,
                "SELECT id, blob FROM source",
                batch_size=64,
                shuffle=True,
                seed=seed,
                shuffle_buffer=1_000,
                cache_dir=tmp_path / "cache",
            )

        plan = make(0).plan
        assert len(plan.layout.counts) == 4
        assert not plan.layout.anywhere.any()
        copies = plan.copied_for(1)
        assert len(copies) == 4
        assert sorted(sum(copy.yields or ()) for copy in copies.values()) == [
            len([i for i in range(per_file) if i % 9]),
            *[per_file] * 3,
        ]
        rhos = []
        for seed in range(4):
            ids = [i for batch in DuckStreamLoader(make(seed)) for i in batch["id"].tolist()]
            assert sorted(ids) == kept
            rhos.append(spearman(ids))
        assert float(np.median(rhos)) < 0.05, rhos
        # Through a filter too: the plan counts it per part over the catalog's scan. (One that
        # drops few rows: a filter that drops a fifth leaves shards small enough to enter
        # anywhere, and nothing to copy.)
        filtered = DuckStreamDataset(
            table,
            "SELECT id, blob FROM source WHERE id % 1000 <> 2",
            batch_size=64,
            shuffle=True,
            shuffle_buffer=1_000,
            cache_dir=tmp_path / "cache",
        )
        # The file with deletes, through the filter, is small enough to enter anywhere, and
        # is copied with the others all the same (left whole, it was read in a fifth of the
        # epoch of its own: |rho| 0.2-0.53).
        plan = filtered.plan
        assert plan.layout.anywhere.tolist().count(False) == 3
        assert len(plan.copied_for(1)) == 4
        ids = [i for batch in DuckStreamLoader(filtered, num_workers=2) for i in batch["id"].tolist()]
        assert sorted(ids) == [i for i in kept if i % 1000 != 2]
        assert abs(spearman(ids)) < 0.1
        # The filter run on each batch after the shuffle (count="skip"), and an expression:
        # both read the copies, the deleted rows dropped.
        reads: list[tuple[str, Count, list[int]]] = [
            ("SELECT id, blob FROM source WHERE id % 1000 <> 2", "skip", [i for i in kept if i % 1000 != 2]),
            ("SELECT id, octet_length(blob) AS n FROM source", "exact", kept),
        ]
        for sql, count, want in reads:
            dataset = DuckStreamDataset(
                table,
                sql,
                batch_size=64,
                shuffle=True,
                shuffle_buffer=1_000,
                cache_dir=tmp_path / "cache",
                count=count,
            )
            assert len(dataset.plan.copied_for(1)) == 4
            ids = [i for batch in DuckStreamLoader(dataset, num_workers=2) for i in batch["id"].tolist()]
            assert sorted(ids) == want
        loader = DuckStreamLoader(make(7), num_workers=2)
        first: list[int] = []
        for index, batch in enumerate(loader):
            first += batch["id"].tolist()
            if index == 40:
                break
        state = loader.state_dict()
        again = DuckStreamLoader(make(7), num_workers=2)
        again.load_state_dict(state)
        rest = [i for batch in again for i in batch["id"].tolist()]
        assert sorted(first + rest) == kept


@pytest.mark.parametrize(
    "sql", ["SELECT id, blob FROM source", "SELECT id, octet_length(blob) AS n FROM source"]
)
def test_a_lake_tables_rotated_row_groups_are_read_once_an_epoch(
    lake: Lake, sql: str, shard_reads: ShardReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five data files of one 20 MB row group each (distinct values, so not a dictionary's
    # indices, each of one 4-byte pattern, so they compress to 1 MB), shuffled through a
    # 1,000-row buffer: each row group is rotated, and its first rows kept for their turn,
    # so each is read once an epoch, from its first row (from the store, on the PostgreSQL +
    # S3 lake), its columns as they are or through an expression. With no room to keep them,
    # each head is read again (the row group's first rows decoded twice), in one process and
    # by two DataLoader workers alike.
    per_file, files = 2_500, 5
    with lake.open() as cat:
        insert_wide(cat, files, [i.to_bytes(4, "little") * 2_048 for i in range(per_file)])
        table = cat.table("wide")
        assert not prepare(table, sql, s3=table.s3).copied_for(1)

        def batches_of(world: World) -> Iterator[pa.RecordBatch]:
            return stream_batches(table, sql, shuffle=True, seed=2, shuffle_buffer=1_000, world=world)

        check_heads_kept(shard_reads, batches_of, files * per_file, files, monkeypatch)
