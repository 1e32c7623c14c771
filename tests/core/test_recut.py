"""Which files a shuffled read copies into small row groups, and the copy's rows (see
duckstream.core.recut); what the loop receives from a copied file is judged in
tests/adapters/test_epoch_quality.py."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duckstream.core.planning import StreamPlan, prepare
from duckstream.core.recut import _parts, _regrouped, count_parts, group_sums, local_copy, merged_parts
from duckstream.errors import SourceError
from duckstream.storage import S3Settings

WIDE = 10_240  # bytes a row, as the plan takes them: a plan's rows made to look as wide as images


def write(folder: Path, sizes: list[int], row_group: int | None = None) -> Path:
    folder.mkdir(parents=True)
    start = 0
    for index, rows in enumerate(sizes):
        table = pa.table({"id": np.arange(start, start + rows), "value": np.arange(rows) * 0.5})
        pq.write_table(table, folder / f"part-{index}.parquet", row_group_size=row_group or rows)
        start += rows
    return folder


def wide_plan(folder: Path, sql: str | None = None) -> StreamPlan:
    plan = prepare(str(folder), sql, s3=S3Settings.resolve())
    return dataclasses.replace(plan, row_bytes=WIDE)


@given(rows=st.integers(1, 100_000), most=st.integers(1, 5_000))
def test_a_row_group_is_cut_into_the_fewest_about_equal_parts(rows: int, most: int) -> None:
    parts = _parts(rows, most)
    assert sum(parts) == rows
    assert max(parts) <= most
    assert max(parts) - min(parts) <= 1
    assert len(parts) == -(-rows // most)


def test_one_large_row_group_is_copied_in_parts_and_the_read_order_starts_pieces_there(
    tmp_path: Path,
) -> None:
    # 20,000 rows of 10 KiB in one row group: one piece, read in storage order. The copy's row
    # groups make 8 pieces for each of the 16 streams a rank reads (1.5 MiB; at most 8 MiB).
    plan = wide_plan(write(tmp_path / "one", [20_000]))
    ((groups, yields),) = plan.copied_for(1).values()
    assert yields is None
    assert list(plan.copied_for(1)) == [0]
    assert len(groups) == 128
    assert sum(groups) == 20_000
    assert max(groups) - min(groups) <= 1
    assert plan.layout_for(1).entries[0].tolist() == np.cumsum(groups)[:-1].tolist()
    # The file's own row groups stay what the plan reads where it does not shuffle.
    assert plan.row_groups[0] == (20_000,)


def test_row_groups_of_at_most_8_mib_are_copied_from_a_large_source(tmp_path: Path) -> None:
    plan = dataclasses.replace(wide_plan(write(tmp_path / "one", [200_000])), row_bytes=40 * 1024)
    ((groups, _),) = plan.copied_for(1).values()
    assert max(groups) == 8 * 1024 * 1024 // (40 * 1024)  # 204 rows, not 200,000 / 128


def test_sources_that_mix_well_or_cannot_be_copied_are_read_in_place(tmp_path: Path) -> None:
    # Narrow rows: small shards, entered anywhere at little cost.
    assert prepare(str(write(tmp_path / "narrow", [20_000])), s3=S3Settings.resolve()).copied_for(1) == {}
    # Eight large row groups, rotated, leave one rank 0.02 of the order; shared by 4 ranks,
    # two a rank, 0.16: then every file is copied, and the order of 4 ranks is the copies'.
    eight = wide_plan(write(tmp_path / "eight", [2_500] * 8))
    assert eight.copied_for(1) == {}
    assert eight.layout_for(1) is eight.layout
    assert sorted(eight.copied_for(4)) == list(range(8))
    assert (
        sum(len(eight.layout_for(4).entries[s]) for s in range(8))
        == sum(len(copy.rows) for copy in eight.copied_for(4).values()) - 8
    )
    # Small row groups: pieces enough.
    assert wide_plan(write(tmp_path / "grouped", [20_000], row_group=150)).copied_for(1) == {}
    # Files DuckDB reads itself (a query that computes on pyarrow's float16, which cannot
    # enter DuckDB) are read from the file: a copy's row groups would not be where DuckDB's
    # reads begin.
    halves = tmp_path / "halves"
    halves.mkdir()
    table = pa.table({"id": np.arange(20_000), "half": np.ones(20_000, dtype=np.float16)})
    pq.write_table(table, halves / "part-0.parquet")
    read_by_duckdb = wide_plan(halves, "SELECT id FROM source WHERE id % 3 = 0 AND half = 1")
    assert not read_by_duckdb.decoded(0)
    assert read_by_duckdb.copied_for(1) == {}
    # Read by pyarrow (float16 passed through, or not read): the same file is copied.
    for sql in ("SELECT id FROM source WHERE id % 3 = 0", "SELECT id, half FROM source WHERE id % 3 = 0"):
        assert list(wide_plan(halves, sql).copied_for(1)) == [0]


def test_a_filter_nested_in_a_with_or_a_subquery_is_counted_and_copied_as_a_plain_one(
    tmp_path: Path,
) -> None:
    # The counting pass passes each row's file and row number through every SELECT of the
    # statement, so the copy's row groups yield what they yield through the plain filter.
    folder = write(tmp_path / "one", [20_000])
    plain = wide_plan(folder, "SELECT id FROM source WHERE id % 3 = 0 AND value < 9000")
    for sql in (
        "WITH kept AS (SELECT * FROM source WHERE id % 3 = 0) SELECT id FROM kept WHERE value < 9000",
        "SELECT k.id FROM (SELECT id, value FROM source s WHERE s.id % 3 = 0) AS k WHERE k.value < 9000",
        "WITH source AS (SELECT * FROM source WHERE value < 9000) SELECT id FROM source WHERE id % 3 = 0",
        "WITH a AS (SELECT id, value * 2 AS twice FROM source WHERE id % 3 = 0), "
        "b AS (SELECT * EXCLUDE (twice) FROM a WHERE twice < 18000) SELECT id FROM b",
    ):
        nested = wide_plan(folder, sql)
        assert nested.parts == plain.parts, sql
        assert nested.yields == plain.yields, sql
        assert nested.copied_for(1) == plain.copied_for(1) != {}, sql


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM source WHERE id % 3 = 0",
        "SELECT id, value FROM source WHERE id >= 15000 OR id % 7 = 2",
        "SELECT unnest([id, id + 1]) AS twice FROM source WHERE id < 5000",
    ],
)
def test_a_filtered_file_is_copied_with_what_each_of_its_row_groups_yields(tmp_path: Path, sql: str) -> None:
    # 20,000 rows in one row group, through a filter (or an UNNEST): the plan counts what
    # each part of the row group yields, and the copy's row groups are runs of those parts;
    # the read order enters the rows the copy's row groups yield where each begins.
    folder = write(tmp_path / "one", [20_000])
    plan = wide_plan(folder, sql)
    assert plan.parts is not None
    ((rows, yields),) = plan.copied_for(1).values()
    assert yields is not None
    assert sum(rows) == 20_000
    assert max(rows) <= 2 * min(rows)
    source = pq.read_table(folder)
    bounds = np.concatenate([[0], np.cumsum(rows)]).tolist()
    for lo, hi, found in zip(bounds[:-1], bounds[1:], yields, strict=True):
        part = source.slice(lo, hi - lo)  # noqa: F841 (DuckDB reads it by its name)
        assert found == len(duckdb.sql(sql.replace("source", "part")).fetchall())
    # One shard: its pieces start where a copy's row group starts yielding rows.
    (shard,) = range(len(plan.shards))
    inside = {int(n) for n in np.cumsum(yields) if 0 < n < sum(yields)}
    assert plan.layout_for(1).entries[shard].tolist() == sorted(inside)


@given(
    groups=st.lists(st.integers(0, 3_000), min_size=1, max_size=6),
    part_rows=st.integers(1, 500),
    rows=st.integers(1, 4_000),
    data=st.data(),
)
def test_a_copy_is_made_of_whole_counted_parts_of_each_row_group(
    groups: list[int], part_rows: int, rows: int, data: st.DataObject
) -> None:
    parts = count_parts(groups, part_rows)
    part_yields = [data.draw(st.integers(0, size)) for size in parts]
    assert group_sums(groups, part_rows, parts) == groups
    copy = merged_parts(groups, part_rows, part_yields, rows)
    assert copy.yields is not None
    assert len(copy.rows) == len(copy.yields)
    # Each of the copy's row groups ends where a part ends, inside one row group.
    part_ends = set(np.cumsum(parts).tolist())
    group_ends = set(np.cumsum(groups).tolist())
    made_ends = np.cumsum(copy.rows).tolist()
    assert set(made_ends) <= part_ends
    assert group_ends <= set(made_ends) | {0}
    # What each yields is what its parts yield.
    kept_at = dict(zip(np.cumsum(parts).tolist(), np.cumsum(part_yields).tolist(), strict=True))
    assert np.cumsum(copy.yields).tolist() == [kept_at[end] for end in made_ends]
    # Each row group in the fewest runs of about ``rows`` rows its parts allow.
    made = iter(copy.rows)
    for group in groups:
        runs, held = 0, 0
        while held < group or runs == 0:
            held, runs = held + next(made), runs + 1
        assert runs == min(len(_parts(group, part_rows)), max(1, -(-group // rows)))


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("thousand")
    table = pa.table({"id": np.arange(1_000), "text": [f"row {i}" for i in range(1_000)]})
    pq.write_table(table, folder / "part-0.parquet", row_group_size=300)
    return folder / "part-0.parquet"


@given(cuts=st.sets(st.integers(1, 999), max_size=40))
def test_the_rows_are_regrouped_in_order_once_each(thousand: Path, cuts: set[int]) -> None:
    bounds = [0, *sorted(cuts), 1_000]
    groups = [b - a for a, b in itertools.pairwise(bounds)]
    tables = list(_regrouped(pq.ParquetFile(thousand), ["id", "text"], groups))
    assert [t.num_rows for t in tables] == groups
    assert pa.concat_tables(tables).column("id").to_pylist() == list(range(1_000))


def test_a_copy_is_written_once_and_again_when_the_file_changes(thousand: Path, tmp_path: Path) -> None:
    source = tmp_path / "part-0.parquet"
    source.write_bytes(thousand.read_bytes())
    groups = [100] * 10
    copy = local_copy(str(source), lambda: pq.ParquetFile(source), ["id"], groups, tmp_path / "cache")
    assert copy is not None
    made = pq.ParquetFile(copy)
    assert [made.metadata.row_group(g).num_rows for g in range(10)] == groups
    assert made.schema_arrow.names == ["id"]
    assert made.read().column("id").to_pylist() == list(range(1_000))
    written = Path(copy).stat().st_mtime_ns
    again = local_copy(str(source), lambda: pq.ParquetFile(source), ["id"], groups, tmp_path / "cache")
    assert again == copy
    assert Path(copy).stat().st_mtime_ns == written
    # Another file's copy, and another read of this one (other columns), before it changes.
    other = tmp_path / "other.parquet"
    other.write_bytes(thousand.read_bytes())
    kept = [
        local_copy(str(other), lambda: pq.ParquetFile(other), ["id"], groups, tmp_path / "cache"),
        local_copy(str(source), lambda: pq.ParquetFile(source), ["text"], groups, tmp_path / "cache"),
    ]
    assert all(found is not None and Path(found).exists() for found in kept)
    # Rewritten in place with other values: another copy, of the new rows; the copies of
    # its old rows are removed, the other file's copy is not.
    pq.write_table(pa.table({"id": np.arange(1_000)[::-1].copy(), "text": ["x"] * 1_000}), source)
    changed = local_copy(str(source), lambda: pq.ParquetFile(source), ["id"], groups, tmp_path / "cache")
    assert changed is not None
    assert changed != copy
    assert pq.read_table(changed).column("id").to_pylist() == list(range(999, -1, -1))
    assert sorted((tmp_path / "cache").glob("recut-*.parquet")) == sorted([Path(changed), Path(str(kept[0]))])


def test_a_copy_that_cannot_be_written_is_none_and_named_in_a_warning(
    thousand: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level("WARNING", logger="duckstream"):
        copy = local_copy(
            str(thousand), lambda: pq.ParquetFile(thousand), ["id"], [500, 500], blocker / "cache"
        )
    assert copy is None
    (message,) = [r.getMessage() for r in caplog.records if "cannot copy" in r.getMessage()]
    assert str(thousand) in message
    assert "cache_dir" in message


def test_a_damaged_file_is_named_and_leaves_no_partial_copy(tmp_path: Path) -> None:
    source = tmp_path / "damaged.parquet"
    pq.write_table(pa.table({"id": np.arange(100_000), "text": [f"row {i}" for i in range(100_000)]}), source)
    data = bytearray(source.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 2_000] = np.random.default_rng(0).bytes(2_000)
    source.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"cannot read .*damaged\.parquet to copy it"):
        local_copy(str(source), lambda: pq.ParquetFile(source), ["id"], [50_000] * 2, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.parquet"))


def test_copies_in_a_cache_folder_inside_the_source_folder_are_not_read_as_rows(tmp_path: Path) -> None:
    # cache_dir="data/cache": the copy (and any materialised result) lies under the source
    # folder, whose Parquet files are every *.parquet below it. The next plan leaves it out.
    from duckstream.stream import DuckStreamDataset, DuckStreamLoader

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    blobs = pa.array([rng.bytes(1_024) for _ in range(20_000)], pa.binary())
    pq.write_table(pa.table({"id": np.arange(20_000), "blob": blobs}), data / "part-0.parquet")

    def epoch(seed: int, sql: str) -> list[int]:
        dataset = DuckStreamDataset(
            data, sql, batch_size=500, shuffle=True, seed=seed, shuffle_buffer=1_000, cache_dir=data / "cache"
        )
        return [i for batch in DuckStreamLoader(dataset) for i in batch["id"].tolist()]

    for seed in range(3):
        assert sorted(epoch(seed, "SELECT id, blob FROM source")) == list(range(20_000))
    assert list((data / "cache").glob("recut-*.parquet"))
    # A statement over the whole source, materialised into the cache folder, read back alone.
    assert epoch(0, "SELECT id FROM source ORDER BY id DESC LIMIT 10") != []
    assert sorted(epoch(1, "SELECT id FROM source ORDER BY id DESC LIMIT 10")) == list(range(19_990, 20_000))
    assert sorted(epoch(2, "SELECT id, blob FROM source")) == list(range(20_000))
    with pytest.raises(SourceError, match="lies in the cache folder"):
        prepare(str(data / "cache"), None, s3=S3Settings.resolve(), cache_dir=data / "cache")
