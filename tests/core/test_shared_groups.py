"""Small row groups decoded once for the pieces a slot reads from inside them (core.shared_groups):
loaded once however many streams ask, held within a byte budget, and the rows each piece
gets are the rows it asked for."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.planning import StreamPlan, prepare
from duckstream.core.reader import ShardReader
from duckstream.core.shared_groups import SharedGroups
from duckstream.storage import S3Settings


def numbers(count: int) -> pa.Table:
    return pa.table({"id": np.arange(count)})


def test_streams_asking_for_one_row_group_at_once_decode_it_once() -> None:
    shared = SharedGroups()
    got: list[pa.Table] = []

    def load() -> pa.Table:
        time.sleep(0.05)  # the others ask while this one decodes
        return numbers(1_000)

    threads = [threading.Thread(target=lambda: got.append(shared.table("a", load))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert shared.loads == 1
    assert len(got) == 8
    assert all(table is got[0] for table in got)


def test_the_least_recently_used_table_is_dropped_past_the_budget() -> None:
    one = numbers(1_000)
    shared = SharedGroups(most_bytes=2 * one.nbytes)
    shared.table("a", lambda: numbers(1_000))
    shared.table("b", lambda: numbers(1_000))
    shared.table("a", lambda: pytest.fail("held: not decoded again"))
    shared.table("c", lambda: numbers(1_000))  # drops b, used last before a
    assert shared.loads == 3
    assert shared.held_bytes == 2 * one.nbytes
    shared.table("a", lambda: pytest.fail("held: not decoded again"))
    shared.table("b", lambda: numbers(1_000))
    assert shared.loads == 4
    # A table larger than the budget is handed on, not held.
    large = shared.table("d", lambda: numbers(10_000))
    assert large.num_rows == 10_000
    assert shared.held_bytes == 2 * one.nbytes


def test_a_failed_decode_leaves_the_next_piece_to_decode_it() -> None:
    shared = SharedGroups()

    def broken() -> pa.Table:
        raise OSError("the store did not answer")

    with pytest.raises(OSError, match="did not answer"):
        shared.table("a", broken)
    assert shared.table("a", lambda: numbers(10)).num_rows == 10
    assert shared.loads == 1


def plan_of(folder: Path, rows: int, group_rows: int, width: int = 8) -> StreamPlan:
    folder.mkdir()
    values = np.random.default_rng(0).integers(0, 256, size=(rows, width), dtype=np.uint8)
    table = pa.table({"id": np.arange(rows), "blob": pa.array([bytes(v) for v in values], pa.binary())})
    pq.write_table(table, folder / "a.parquet", row_group_size=group_rows)
    return prepare(folder, "SELECT id, blob FROM source", s3=S3Settings())


def read_parts(plan: StreamPlan, parts: list[tuple[int, int]], shared: SharedGroups) -> list[list[int]]:
    """Each part's ids, read by a reader of its own, the parts' batches taken in turn (as the
    streams of a slot are)."""
    readers = [ShardReader(plan, threads=1, batch_rows=64, shared=shared) for _ in parts]
    try:
        streams = {
            index: reader.read(plan.shards[0], lo, hi)
            for index, (reader, (lo, hi)) in enumerate(zip(readers, parts, strict=True))
        }
        ids: list[list[int]] = [[] for _ in parts]
        while streams:
            for index, stream in list(streams.items()):
                batch = next(stream, None)
                if batch is None:
                    del streams[index]
                else:
                    ids[index].extend(batch.column("id").to_pylist())
        return ids
    finally:
        for reader in readers:
            reader.close()


def test_parts_of_a_small_row_group_slice_it_decoded_once(tmp_path: Path) -> None:
    # One file of one 10,000-row group cut into 4 parts, each read by a stream of its own from
    # its own row: the group is decoded once, not once a part (each part used to decode the
    # rows before it again); a piece of a whole row group is read as before.
    plan = plan_of(tmp_path / "small", 10_000, 10_000)
    assert len(plan.shards) == 1
    parts = [(7_500, 10_000), (2_500, 5_000), (0, 2_500), (5_000, 7_500)]
    shared = SharedGroups()
    assert read_parts(plan, parts, shared) == [list(range(lo, hi)) for lo, hi in parts]
    assert shared.loads == 1
    whole = SharedGroups()
    assert read_parts(plan, [(0, 10_000)], whole) == [list(range(10_000))]
    assert whole.loads == 0


def test_parts_of_a_large_row_group_decode_on_their_own(tmp_path: Path) -> None:
    # A row group over 8 MiB decoded is never held whole: each part decodes its way to its rows.
    plan = plan_of(tmp_path / "large", 3_000, 3_000, width=4_096)
    parts = [(1_500, 3_000), (0, 1_500)]
    shared = SharedGroups()
    assert read_parts(plan, parts, shared) == [list(range(lo, hi)) for lo, hi in parts]
    assert shared.loads == 0


@pytest.fixture(scope="module")
def grouped_plan(tmp_path_factory: pytest.TempPathFactory) -> StreamPlan:
    return plan_of(tmp_path_factory.mktemp("grouped") / "data", 1_000, 300)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(1, 999), min_size=1, max_size=6, unique=True), seed=st.integers(0, 99))
def test_any_parts_of_any_row_groups_hand_on_exactly_their_rows(
    grouped_plan: StreamPlan, cuts: list[int], seed: int
) -> None:
    # Row groups of 300 rows (the last 100); parts cut anywhere, read in any order side by side.
    bounds = [0, *sorted(cuts), 1_000]
    parts = list(itertools.pairwise(bounds))
    parts = [parts[i] for i in np.random.default_rng(seed).permutation(len(parts))]
    shared = SharedGroups()
    assert read_parts(grouped_plan, parts, shared) == [list(range(lo, hi)) for lo, hi in parts]
    # Each row group that a part lies inside, not covering all of it, is decoded once.
    inside = {
        group
        for lo, hi in parts
        if (group := lo // 300) == (hi - 1) // 300
        and (lo, hi) != (300 * group, min(300 * group + 300, 1_000))
    }
    assert shared.loads == len(inside)
