"""How many pieces a shuffled read keeps open: as many decoders as their pages allow."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duckstream.core.interleave import HELD_HEAD_BYTES
from duckstream.core.pipeline import DECODER_BYTES, _piece_batches, read_streams
from duckstream.core.planning import StreamPlan, decoder_bytes, prepare
from duckstream.core.reader import ShardReader
from duckstream.core.shards import Shard
from duckstream.core.source import FileMeta
from duckstream.core.world import World
from duckstream.storage import S3Settings
from duckstream.stream import DuckStreamDataset, DuckStreamLoader, stream_batches
from tests.conftest import ShardReads, write_one_group_files

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def small_plan(tmp_path_factory: pytest.TempPathFactory) -> StreamPlan:
    folder = tmp_path_factory.mktemp("small")
    pq.write_table(pa.table({"id": np.arange(100)}), folder / "a.parquet")
    return prepare(folder, None, s3=S3Settings())


def meta(rows: int, groups: int, **columns: int) -> FileMeta:
    """A file of ``rows`` rows in ``groups`` equal row groups, ``columns`` bytes per row each."""
    schema = pa.schema([(name, pa.binary()) for name in columns])
    sizes = tuple(rows // groups for _ in range(groups))
    per_column = tuple((name, per_row * rows) for name, per_row in columns.items())
    return FileMeta("f.parquet", sizes, schema, sum(n for _, n in per_column), per_column)


def test_a_decoder_holds_a_page_of_each_column_read_raw_and_decompressed() -> None:
    images = [meta(50_000, 8, id=8, caption=360, image=10_240)]
    # 1,024 images a page, two copies; the caption's 1 MiB page; the ids' whole chunk (50 KB).
    expected = 2 * 1_024 * 10_240 + 2 * MiB + 2 * (8 * 50_000 // 8)
    assert decoder_bytes(images, ["id", "caption", "image"]) == expected
    assert decoder_bytes(images, ["id", "caption"]) == 2 * MiB + 2 * (8 * 50_000 // 8)
    # Small row groups: a page is never more than a column's chunk.
    small_groups = [meta(50_000, 500, image=10_240)]
    assert decoder_bytes(small_groups, ["image"]) == 2 * 100 * 10_240


@given(held=st.integers(1, 2 * DECODER_BYTES))
def test_open_decoders_stay_within_their_budget_but_never_below_two(
    small_plan: StreamPlan, held: int
) -> None:
    streams = read_streams(dataclasses.replace(small_plan, decoder_bytes=held))
    assert 2 <= streams <= 16
    assert streams == 2 or streams * held <= DECODER_BYTES
    assert streams == 16 or (streams + 1) * held > DECODER_BYTES


@pytest.mark.parametrize(
    ("sql", "streams"),
    [
        (None, 9),  # 10 KiB images: 9 decoders of 2 x 10 MiB pages (and small columns) in 192 MiB
        ("SELECT id FROM source", 16),
        ("SELECT id, octet_length(image) AS n FROM source WHERE id % 2 = 0", 9),
        ("SELECT id, text FROM source WHERE id % 2 = 0", 16),
    ],
)
def test_wide_columns_read_fewer_pieces_at_once(tmp_path: Path, sql: str | None, streams: int) -> None:
    rows = 2_048
    image = np.random.default_rng(0).integers(0, 256, size=(rows, 10_240), dtype=np.uint8)
    table = pa.table(
        {
            "id": np.arange(rows),
            "text": [f"caption {i}" for i in range(rows)],
            "image": pa.array([bytes(r) for r in image], pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "images.parquet", row_group_size=rows)
    plan = prepare(tmp_path, sql, s3=S3Settings())
    assert plan.decodes
    assert read_streams(plan) == streams


@pytest.mark.parametrize("held", [frozenset(), frozenset({(0, 100, 300)}), frozenset({(0, 100, 250)})])
def test_a_rotated_piece_read_once_with_its_head_held_hands_on_the_same_rows(
    tmp_path: Path, held: frozenset[tuple[int, int, int]]
) -> None:
    # A rotation (rows 300-999, then 100-299 of the same shard) read in one pass keeps its
    # first rows for their turn where they are held; otherwise the head is read again. Either
    # way the same rows in the same order; other pieces pass through.
    pq.write_table(pa.table({"id": np.arange(1_200)}), tmp_path / "a.parquet", row_group_size=1_200)
    plan = prepare(tmp_path, None, s3=S3Settings())
    pieces = [(0, 300, 1_000), (0, 100, 300), (0, 1_000, 1_200), (0, 0, 100)]
    reader = ShardReader(plan, threads=1, batch_rows=64)
    try:
        batches = list(_piece_batches(reader, plan, pieces, held))
    finally:
        reader.close()
    ids = [i for batch in batches for i in batch.column("id").to_pylist()]
    assert ids == [*range(300, 1_000), *range(100, 300), *range(1_000, 1_200), *range(100)]
    # Held: the rotation's head (rows 100-299); the next pair (1000-1200, then 0-100) is no rotation.
    passes = 3 if (0, 100, 300) in held else 4
    assert reader_passes(plan, pieces, held) == passes


def reader_passes(
    plan: StreamPlan, pieces: list[tuple[int, int, int]], held: frozenset[tuple[int, int, int]]
) -> int:
    """How many reads of the shard ``_piece_batches`` makes."""
    reader = ShardReader(plan, threads=1, batch_rows=64)
    calls = []
    real = reader.read

    def counted(shard: Shard, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
        calls.append((lo, hi))
        return real(shard, lo, hi)

    reader.read = counted  # type: ignore[method-assign]
    try:
        for _ in _piece_batches(reader, plan, pieces, held):
            pass
    finally:
        reader.close()
    return len(calls)


def test_the_pieces_open_at_once_share_a_window_of_bytes_for_the_rows_they_keep(
    tmp_path: Path, shard_reads: ShardReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five files of one 20 MB row group, shuffled through a 1,000-row buffer: each is rotated,
    # its first rows (up to 10 MB) more than 4 MiB but within a fifth of 64 MiB, so every
    # epoch reads each row group once, and still yields each row once. (Five, not fewer: a
    # file of fewer such row groups is read from a copy in small ones, see recut.)
    rows, files = 2_500, 5
    write_one_group_files(tmp_path, files, rows)

    def reads_of_four_epochs() -> int:
        shard_reads.clear()
        for epoch in range(4):
            batches = stream_batches(tmp_path, shuffle=True, seed=1, epoch=epoch, shuffle_buffer=1_000)
            ids = [i for batch in batches for i in batch.column("id").to_pylist()]
            assert sorted(ids) == list(range(files * rows))
        return len(shard_reads)

    assert reads_of_four_epochs() == 4 * files
    assert set(shard_reads) == {(0, rows)}
    # Within 8 MiB, the smallest heads that fit are kept, the others read twice; with no
    # room, every head is.
    monkeypatch.setattr("duckstream.core.pipeline.SHUFFLE_BUFFER_BYTES", 2 * HELD_HEAD_BYTES)
    assert 4 * files < reads_of_four_epochs() < 8 * files
    monkeypatch.setattr("duckstream.core.pipeline.SHUFFLE_BUFFER_BYTES", 1)
    assert reads_of_four_epochs() == 8 * files


@pytest.mark.slow
def test_dataloader_workers_keep_heads_as_their_worlds_do_in_one_process(
    tmp_path: Path, shard_reads: ShardReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same five files read by two DataLoader worker processes: each worker plans the
    # heads it keeps as its world does read here, so they read each row group as often
    # (fewer times than with no room to keep heads), and every row comes once.
    rows, files = 2_500, 5
    write_one_group_files(tmp_path, files, rows)

    def reads_by_worker_processes() -> int:
        shard_reads.clear()
        dataset = DuckStreamDataset(
            tmp_path, batch_size=100, shuffle=True, seed=1, shuffle_buffer=1_000, output="arrow"
        )
        ids = [
            i for batch in DuckStreamLoader(dataset, num_workers=2) for i in batch.column("id").to_pylist()
        ]
        assert sorted(ids) == list(range(files * rows))
        return len(shard_reads)

    def reads_of_their_worlds_here() -> int:
        shard_reads.clear()
        for worker in range(2):
            world = World(num_workers=2, worker=worker)
            for _ in stream_batches(
                tmp_path, shuffle=True, seed=1, epoch=0, shuffle_buffer=1_000, world=world
            ):
                pass
        return len(shard_reads)

    kept = reads_by_worker_processes()
    assert kept == reads_of_their_worlds_here()
    monkeypatch.setattr("duckstream.core.pipeline.SHUFFLE_BUFFER_BYTES", 1)
    assert reads_by_worker_processes() == reads_of_their_worlds_here() > kept
