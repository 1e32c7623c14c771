"""Which files a shuffled read copies into small row groups, and the copy's rows (see
duckstream.core.recut); what the loop receives from a copied file is judged in
tests/adapters/test_epoch_quality.py."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duckstream.core.planning import StreamPlan, prepare
from duckstream.core.recut import _parts, _regrouped, local_copy
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
    (groups,) = plan.copied_for(1).values()
    assert list(plan.copied_for(1)) == [0]
    assert len(groups) == 128
    assert sum(groups) == 20_000
    assert max(groups) - min(groups) <= 1
    assert plan.layout_for(1).entries[0].tolist() == np.cumsum(groups)[:-1].tolist()
    # The file's own row groups stay what the plan reads where it does not shuffle.
    assert plan.row_groups[0] == (20_000,)


def test_row_groups_of_at_most_8_mib_are_copied_from_a_large_source(tmp_path: Path) -> None:
    plan = dataclasses.replace(wide_plan(write(tmp_path / "one", [200_000])), row_bytes=40 * 1024)
    (groups,) = plan.copied_for(1).values()
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
        == sum(map(len, eight.copied_for(4).values())) - 8
    )
    # Small row groups: pieces enough.
    assert wide_plan(write(tmp_path / "grouped", [20_000], row_group=150)).copied_for(1) == {}
    # A filter: where the kept rows of the copy's row groups begin is not counted.
    assert wide_plan(tmp_path / "narrow", "SELECT id FROM source WHERE id % 3 = 0").copied_for(1) == {}


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
    # Rewritten in place with other values: another copy, of the new rows.
    pq.write_table(pa.table({"id": np.arange(1_000)[::-1].copy(), "text": ["x"] * 1_000}), source)
    changed = local_copy(str(source), lambda: pq.ParquetFile(source), ["id"], groups, tmp_path / "cache")
    assert changed is not None
    assert changed != copy
    assert pq.read_table(changed).column("id").to_pylist() == list(range(999, -1, -1))


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
