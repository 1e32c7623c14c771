"""The whole stream on real Parquet files: coverage, balance, order, SQL meaning, bad input."""

from __future__ import annotations

import re
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duckstream.core.held_heads import stream_indices
from duckstream.core.partition import Even
from duckstream.core.pipeline import _pieces, _stream_pieces, rebatch, shuffled_batches
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, QueryError, SourceError
from duckstream.stream import stream_batches
from tests.conftest import numbers_table, write_wide_file


def write_files(directory: Path, sizes: list[int], row_group: int) -> None:
    start = 0
    for index, rows in enumerate(sizes):
        pq.write_table(
            numbers_table(start, start + rows),
            directory / f"part-{index:03d}.parquet",
            row_group_size=max(1, row_group),
        )
        start += rows


def read_all(source: object, world_size: int, num_workers: int, **kw: object) -> list[list[int]]:
    """ids each slot yields, slot by slot."""
    out = []
    for rank in range(world_size):
        for worker in range(num_workers):
            world = World(rank, world_size, worker, num_workers)
            ids: list[int] = []
            for batch in stream_batches(source, world=world, **kw):  # type: ignore[arg-type]
                ids.extend(batch.column("id").to_pylist())
            out.append(ids)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 120), min_size=1, max_size=5),
    row_group=st.integers(1, 50),
    world_size=st.integers(1, 8),
    num_workers=st.integers(1, 4),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 5),
    even=st.sampled_from(["pad", "drop"]),
    shuffle=st.booleans(),
    threads=st.sampled_from([1, 2, 3]),  # 2 and 3: threads read ahead
    batch_size=st.integers(1, 16),
    shuffle_buffer=st.integers(1, 40),
)
def test_every_row_once_and_equal_ranks_on_real_files(
    sizes: list[int],
    row_group: int,
    world_size: int,
    num_workers: int,
    seed: int,
    epoch: int,
    even: Even,
    shuffle: bool,
    threads: int,
    batch_size: int,
    shuffle_buffer: int,
) -> None:
    total = sum(sizes)
    with tempfile.TemporaryDirectory() as tmp:
        write_files(Path(tmp), sizes, row_group)
        if total == 0:
            return
        slots = read_all(
            tmp,
            world_size,
            num_workers,
            seed=seed,
            epoch=epoch,
            even=even,
            shuffle=shuffle,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            threads=threads,
        )
    per_rank = [
        sum(len(s) for s in slots[r * num_workers : (r + 1) * num_workers]) for r in range(world_size)
    ]
    assert len(set(per_rank)) == 1
    counts = Counter(i for s in slots for i in s)
    if even == "pad":
        assert set(counts) == set(range(total))
        # Padding only repeats rows, and fewer than there are ranks: a rank reads ceil(total / ranks).
        padding = sum(counts.values()) - total
        assert 0 <= padding < world_size, f"{padding} rows of padding for {world_size} ranks"
    else:
        assert max(counts.values(), default=1) == 1
        assert len(counts) == (total // world_size) * world_size


@pytest.fixture(scope="module")
def ten_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ten")
    write_files(directory, [2_000] * 10, 500)
    return directory


def ids_of(source: object, **kw: object) -> list[int]:
    return [i for b in stream_batches(source, **kw) for i in b.column("id").to_pylist()]  # type: ignore[arg-type]


def test_unshuffled_single_process_is_storage_order(ten_files: Path) -> None:
    assert ids_of(ten_files, batch_size=333) == list(range(20_000))


def test_same_inputs_same_order_and_new_epoch_new_order(ten_files: Path) -> None:
    first = ids_of(ten_files, shuffle=True, seed=7, epoch=3)
    assert first == ids_of(ten_files, shuffle=True, seed=7, epoch=3)
    assert first != ids_of(ten_files, shuffle=True, seed=7, epoch=4)
    assert first != ids_of(ten_files, shuffle=True, seed=8, epoch=3)
    assert sorted(first) == list(range(20_000))


def test_shuffle_decorrelates_position_and_id(ten_files: Path) -> None:
    ids = np.array(ids_of(ten_files, shuffle=True, seed=0, shuffle_buffer=2_000))
    ranks = np.argsort(np.argsort(ids))
    rho = np.corrcoef(np.arange(len(ids)), ranks)[0, 1]
    assert abs(rho) < 0.1, rho
    # and rows within a window really move: few stay next to their storage neighbour
    assert np.mean(np.abs(np.diff(ids)) == 1) < 0.05


def test_batches_have_the_requested_size_and_drop_last(ten_files: Path) -> None:
    sizes = [b.num_rows for b in stream_batches(ten_files, batch_size=3_000)]
    assert sizes == [3_000] * 6 + [2_000]
    sizes = [b.num_rows for b in stream_batches(ten_files, batch_size=3_000, drop_last=True)]
    assert sizes == [3_000] * 6


def test_fixed_size_lists_keep_their_type(ten_files: Path) -> None:
    batch = next(stream_batches(ten_files, "SELECT id, vector FROM source WHERE id > 5"))
    assert pa.types.is_fixed_size_list(batch.schema.field("vector").type)
    assert batch.column("vector")[0].as_py() == [6.0, 7.0, 8.0]


# --------------------------------------------------------------------------- SQL semantics


def test_row_local_sql_filters_and_computes_per_shard(ten_files: Path) -> None:
    rows = [
        r
        for b in stream_batches(ten_files, "SELECT id, id * 2 AS twice FROM source WHERE id % 1000 = 0")
        for r in b.to_pylist()
    ]
    assert rows == [{"id": i, "twice": 2 * i} for i in range(0, 20_000, 1000)]


def test_sql_reads_are_not_disturbed_by_parquet_files_in_the_working_directory(
    ten_files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    monkeypatch.chdir(tmp_path)
    batches = stream_batches(ten_files, "SELECT id * 2 AS twice FROM source WHERE id % 2 = 0")
    assert sorted(i for b in batches for i in b.column("twice").to_pylist()) == [
        2 * i for i in range(20_000) if i % 2 == 0
    ]


def test_the_source_may_be_named_by_its_uri(ten_files: Path) -> None:
    sql = f"SELECT id FROM read_parquet('{ten_files}') WHERE id < 3"
    assert ids_of(ten_files, sql=sql) == [0, 1, 2]
    glob = f"{ten_files}/*.parquet"
    assert ids_of(glob, sql=f"SELECT id FROM '{glob}' WHERE id < 2") == [0, 1]


def test_unnest_is_row_local(ten_files: Path) -> None:
    values = [
        v
        for b in stream_batches(ten_files, "SELECT unnest(vector) AS v FROM source WHERE id < 2")
        for v in b.column("v").to_pylist()
    ]
    assert values == [0.0, 1.0, 2.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("even", ["pad", "drop"])
def test_limit_means_limit_over_all_ranks_and_workers(ten_files: Path, even: Even) -> None:
    slots = read_all(ten_files, 2, 2, sql="SELECT id FROM source LIMIT 5", even=even)
    seen = Counter(i for s in slots for i in s)
    if even == "pad":
        assert len(seen) == 5  # five rows; one repeated so both ranks get three
        assert sum(seen.values()) == 6
    else:
        assert sum(seen.values()) == 4
    assert set(seen) <= set(range(20_000))


def test_shuffle_permutes_a_query_result_without_reselecting(ten_files: Path) -> None:
    sql = "SELECT id FROM source ORDER BY id DESC LIMIT 8"
    plain = ids_of(ten_files, sql=sql)
    assert plain == list(range(19_999, 19_991, -1))
    shuffled = ids_of(ten_files, sql=sql, shuffle=True, seed=3)
    assert sorted(shuffled) == sorted(plain)
    assert shuffled != plain


def test_group_by_runs_once_globally(ten_files: Path) -> None:
    sql = "SELECT id % 4 AS bucket, count(*) AS n FROM source GROUP BY bucket"
    slots = []
    for rank in range(2):
        for worker in range(2):
            slots += [
                r
                for b in stream_batches(ten_files, sql, world=World(rank, 2, worker, 2))
                for r in b.to_pylist()
            ]
    assert sorted((r["bucket"], r["n"]) for r in slots) == [(0, 5_000), (1, 5_000), (2, 5_000), (3, 5_000)]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT DISTINCT id % 3 AS k FROM source",
        "SELECT id, row_number() OVER (ORDER BY id) AS n FROM source",
        "SELECT a.id FROM source a JOIN source b ON a.id = b.id + 1",
        "SELECT count(*) AS n FROM source",
    ],
)
def test_non_row_local_queries_keep_their_whole_source_meaning(ten_files: Path, sql: str) -> None:
    import duckdb

    expected = Counter(
        tuple(r) for r in duckdb.sql(sql.replace("source", f"'{ten_files}/*.parquet'")).fetchall()
    )
    got = Counter(
        tuple(r.values())
        for rank in range(2)
        for b in stream_batches(ten_files, sql, world=World(rank, 2), even="drop")
        for r in b.to_pylist()
    )
    # even="drop" may leave out one row when the result count is odd; nothing else differs
    assert got <= expected
    assert sum(expected.values()) - sum(got.values()) <= 1


# --------------------------------------------------------------------------- bad input


def test_missing_path_names_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file or directory"):
        stream_batches(tmp_path / "nope")


def test_empty_glob_names_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no files match .*\*\.parquet"):
        stream_batches(str(tmp_path / "*.parquet"))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_file_is_named(tmp_path: Path, damage: str) -> None:
    write_files(tmp_path, [100, 100], 50)
    bad = tmp_path / "part-001.parquet"
    data = bad.read_bytes()
    bad.write_bytes(b"not a parquet file at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(SourceError, match=str(bad)):
        stream_batches(tmp_path)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sql", [None, "SELECT upper(text) AS shout, id FROM source"])
def test_a_damaged_data_page_is_named_when_it_is_read(tmp_path: Path, threads: int, sql: str | None) -> None:
    # The footer is intact, so planning succeeds; the damage shows only when the page is read.
    table = pa.table({"id": list(range(5_000)), "text": [f"row {i} " + "x" * 40 for i in range(5_000)]})
    bad = tmp_path / "part-000.parquet"
    pq.write_table(table, bad, compression="snappy")
    data = bytearray(bad.read_bytes())
    data[1_000:9_000] = b"\xab" * 8_000
    bad.write_bytes(bytes(data))
    stream = stream_batches(tmp_path, sql, threads=threads)
    with pytest.raises(SourceError, match=rf"cannot read rows 0\.\.4999 of {re.escape(str(bad))}: .*damaged"):
        next(stream)


def test_conflicting_schemas_name_file_and_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "x": [1.0, 2.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [3, 4], "x": ["p", "q"]}), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"column 'x' is double in .*a\.parquet but string in .*b\.parquet"):
        stream_batches(tmp_path)


def test_sql_that_does_not_parse_names_the_statement(ten_files: Path) -> None:
    with pytest.raises(QueryError, match="SELEC id FROM source"):
        stream_batches(ten_files, "SELEC id FROM source")


def test_unknown_column_is_named(ten_files: Path) -> None:
    with pytest.raises(QueryError, match='"nope"'):
        stream_batches(ten_files, "SELECT nope FROM source")


def test_sql_that_ignores_the_source_is_refused(ten_files: Path) -> None:
    with pytest.raises(ConfigurationError, match="must read the data as `source`"):
        stream_batches(ten_files, "SELECT 1 AS x")


@pytest.mark.parametrize(
    "sql", ["SELECT id FROM source WHERE random() < 0.5", "SELECT id, uuid() AS u FROM source"]
)
def test_sql_that_changes_on_every_read_is_refused(ten_files: Path, sql: str) -> None:
    with pytest.raises(ConfigurationError, match=r"gives other rows on every read.*hash\(id\)"):
        stream_batches(ten_files, sql)


def test_reading_ahead_changes_nothing_but_speed(ten_files: Path) -> None:
    # threads=1 reads in the consuming thread; 2 and 4 put one thread to read ahead.
    orders = [ids_of(ten_files, shuffle=True, seed=5, batch_size=100, threads=n) for n in (1, 2, 4)]
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0]) == list(range(20_000))


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_stream_left_early_stops_its_read_ahead_thread(tmp_path: Path, shuffle: bool) -> None:
    for index in range(2):
        write_wide_file(tmp_path / f"part-{index}.parquet", index * 600, 600)
    # A window of 64 rows is read ahead 2 read batches deep: a lane cannot finish its file
    # while the consumer holds only the first batch.
    stream = stream_batches(tmp_path, shuffle=shuffle, batch_size=10, shuffle_buffer=64, threads=2)
    next(stream)
    assert any(t.name == "duckstream-read-ahead" for t in threading.enumerate())
    stream.close()  # type: ignore[attr-defined]
    assert not any(t.name == "duckstream-read-ahead" for t in threading.enumerate())


@settings(max_examples=100, deadline=None)
@given(
    read_sizes=st.lists(st.integers(0, 30), max_size=8),
    size=st.integers(1, 12),
    first=st.one_of(st.none(), st.integers(1, 12)),
    drop_last=st.booleans(),
)
def test_rebatch_cuts_the_rows_into_batches_of_the_asked_sizes(
    read_sizes: list[int], size: int, first: int | None, drop_last: bool
) -> None:
    starts = np.cumsum([0, *read_sizes])
    reads = [pa.record_batch({"id": list(range(a, a + n))}) for a, n in zip(starts, read_sizes, strict=False)]
    out = list(rebatch(reads, size, drop_last, first=first))
    ids = [i for batch in out for i in batch.column("id").to_pylist()]
    total = int(starts[-1])
    wanted = [first or size] + [size] * total  # the sizes asked for, in order
    full = []
    rows = 0
    for want in wanted:
        if rows + want > total:
            break
        full.append(want)
        rows += want
    tail = [] if drop_last or rows == total else [total - rows]
    assert [batch.num_rows for batch in out] == full + tail
    assert ids == list(range(len(ids)))


def test_views_kept_across_windows_of_wide_and_narrow_values_give_the_same_rows() -> None:
    # Windows of 10 rows, wide values (gathered as views) then narrow ones (taken) then wide:
    # batches of 7 straddle them, so a batch joins rows of both kinds.
    widths = [1_000] * 10 + [3] * 10 + [1_000] * 10
    table = pa.table({"id": np.arange(30), "blob": [bytes([i]) * width for i, width in enumerate(widths)]})

    def batches(views: bool) -> list[pa.RecordBatch]:
        return list(
            shuffled_batches(
                table.to_batches(max_chunksize=4),
                buffer=10,
                key=(1, 2),
                first_window=0,
                skip=0,
                batch_size=7,
                drop_last=False,
                schema=table.schema,
                views=views,
            )
        )

    kept, cast = batches(True), batches(False)
    assert [b.to_pylist() for b in kept] == [b.to_pylist() for b in cast]
    assert sorted(r["id"] for b in kept for r in b.to_pylist()) == list(range(30))
    assert {b.schema.field("blob").type for b in cast} == {pa.binary()}
    assert {b.schema.field("blob").type for b in kept} == {pa.binary(), pa.binary_view()}


def pieces_one_by_one(ranges: np.ndarray, rows: list[int], order: list[int]) -> list[tuple[int, int, int]]:
    """Epoch positions as pieces, range by range and row by row: what ``_pieces`` finds."""
    sizes = [rows[shard] for shard in order]
    owner = [index for index, size in enumerate(sizes) for _ in range(size)]
    begins = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    found: list[list[int]] = []
    for start, stop in ranges.tolist():
        for position in range(start, stop):
            index = owner[position]
            shard, row = order[index], position - begins[index]
            if found and found[-1][0] == shard and found[-1][2] == row:
                found[-1][2] += 1
            else:
                found.append([shard, row, row + 1])
    return [(shard, lo, hi) for shard, lo, hi in found]


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.integers(0, 30), min_size=1, max_size=8),
    cuts=st.lists(st.tuples(st.integers(0, 240), st.integers(0, 60)), max_size=12),
    seed=st.integers(0, 100),
)
def test_epoch_positions_become_the_pieces_of_shards_they_read(
    rows: list[int], cuts: list[tuple[int, int]], seed: int
) -> None:
    order = np.random.default_rng(seed).permutation(len(rows))
    sizes = np.asarray(rows, dtype=np.int64)[order]
    total = int(sizes.sum())
    # Any ranges within the epoch, empty ones and ones over several shards included.
    ranges = np.asarray([(min(a, total), min(a + n, total)) for a, n in cuts], dtype=np.int64).reshape(-1, 2)
    found = list(_pieces(ranges, order, sizes, np.cumsum(sizes)))
    assert found == pieces_one_by_one(ranges, rows, order.tolist())
    assert all(isinstance(value, int) for piece in found for value in piece)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.integers(0, 30), min_size=1, max_size=8),
    cuts=st.lists(st.tuples(st.integers(0, 240), st.integers(0, 60), st.integers(0, 3)), max_size=16),
    seed=st.integers(0, 100),
)
@example(rows=[10], cuts=[(0, 5, 0), (5, 5, 1)], seed=0)
def test_every_streams_pieces_are_found_in_one_pass_as_stream_by_stream(
    rows: list[int], cuts: list[tuple[int, int, int]], seed: int
) -> None:
    # A stream's ranges continue each other where they meet (its pieces join them), but
    # never another stream's: two streams reading on from the same row are two pieces.
    order = np.random.default_rng(seed).permutation(len(rows))
    sizes = np.asarray(rows, dtype=np.int64)[order]
    total = int(sizes.sum())
    ranges = np.asarray([(min(a, total), min(a + n, total)) for a, n, _ in cuts], dtype=np.int64).reshape(
        -1, 2
    )
    owners = np.asarray([owner for _, _, owner in cuts], dtype=np.int64)
    streams = stream_indices(owners)
    found = _stream_pieces(ranges, streams, order, sizes, np.cumsum(sizes))
    assert found == {
        stream: list(_pieces(ranges[index], order, sizes, np.cumsum(sizes)))
        for stream, index in streams.items()
    }
    assert all(isinstance(value, int) for pieces in found.values() for piece in pieces for value in piece)
