"""The next epoch's read, begun while the last windows of a pass go out: it yields exactly what
a read opened then would, and it is dropped whenever the next pass asks for another read."""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckstream.core.cursor import EpochCursor
from duckstream.core.next_epoch import StartedRead
from duckstream.core.options import ReadOptions
from duckstream.core.pipeline import read_slot
from duckstream.core.planning import StreamPlan, prepare
from duckstream.core.read_ahead import THREAD_NAME
from duckstream.core.world import World
from duckstream.storage import S3Settings

ROWS = 3_000


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> StreamPlan:
    folder = tmp_path_factory.mktemp("next-epoch")
    bounds = [0, 1_100, 1_101, 2_400, ROWS]
    for index, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        table = pa.table({"id": pa.array(range(lo, hi), pa.int64())})
        pq.write_table(table, folder / f"part-{index}.parquet", row_group_size=300)
    return prepare(str(folder), s3=S3Settings.resolve())


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id, id * 2 AS twice FROM source",  # runs in DuckDB once a window
        "SELECT id FROM source WHERE id % 3 = 0",  # runs in DuckDB in each stream
    ],
)
def test_a_query_read_begun_early_yields_what_the_next_pass_would_read(
    plan: StreamPlan, opened: list[int], sql: str
) -> None:
    queried = prepare(str(Path(plan.files[0]).parent), sql, s3=S3Settings.resolve())
    options = ReadOptions(shuffle=True, seed=4, shuffle_buffer=500, batch_size=64)
    cursor = EpochCursor(queried, options)
    first = ids(cursor.open(World(0, 1), epoch=0, then=1).batches)
    second = ids(cursor.open(World(0, 1), epoch=1).batches)
    assert opened == [0, 1]
    assert first == fresh(queried, options, World(0, 1), 0)
    assert second == fresh(queried, options, World(0, 1), 1)
    assert sorted(second) == sorted(first) != second


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The epochs of every read the cursor opens (early ones included)."""
    epochs: list[int] = []
    real = read_slot

    def counted(plan: StreamPlan, options: ReadOptions, start: Any, **kw: Any) -> Iterator[pa.RecordBatch]:
        epochs.append(start.epoch)
        return real(plan, options, start, **kw)

    monkeypatch.setattr("duckstream.core.cursor.read_slot", counted)
    return epochs


def ids(batches: Any) -> list[int]:
    return [i for batch in batches for i in batch.column("id").to_pylist()]


def fresh(plan: StreamPlan, options: ReadOptions, world: World, epoch: int) -> list[int]:
    return ids(EpochCursor(plan, options).open(world, epoch=epoch).batches)


def read_ahead_threads() -> int:
    return sum(thread.name == THREAD_NAME for thread in threading.enumerate())


def wait_for_threads(at_most: int) -> int:
    deadline = time.monotonic() + 10
    while read_ahead_threads() > at_most and time.monotonic() < deadline:
        time.sleep(0.01)
    return read_ahead_threads()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    buffer=st.sampled_from([64, 500, 4_096]),
    batch_size=st.integers(1, 300),
    world=st.sampled_from([World(0, 1), World(1, 2), World(2, 3, 1, 2)]),
    epoch=st.integers(0, 5),
)
def test_a_read_begun_early_yields_what_the_next_pass_would_read(
    plan: StreamPlan,
    opened: list[int],
    seed: int,
    buffer: int,
    batch_size: int,
    world: World,
    epoch: int,
) -> None:
    opened.clear()
    options = ReadOptions(shuffle=True, seed=seed, shuffle_buffer=buffer, batch_size=batch_size)
    cursor = EpochCursor(plan, options)
    first = ids(cursor.open(world, epoch=epoch, then=epoch + 1).batches)
    # The next epoch's read began during the pass, and the next pass takes it.
    assert opened == [epoch, epoch + 1]
    second = ids(cursor.open(world, epoch=epoch + 1, then=epoch + 2).batches)
    assert opened == [epoch, epoch + 1, epoch + 2]
    assert first == fresh(plan, options, world, epoch)
    assert second == fresh(plan, options, world, epoch + 1)
    assert first != second


def test_a_read_begun_early_is_dropped_when_the_next_pass_asks_for_another(
    plan: StreamPlan, opened: list[int]
) -> None:
    options = ReadOptions(shuffle=True, seed=1, shuffle_buffer=256, batch_size=32)
    world = World(0, 1)
    cursor = EpochCursor(plan, options)
    before = read_ahead_threads()
    ids(cursor.open(world, epoch=0, then=1).batches)
    assert opened == [0, 1]
    # The loop set another epoch: that one is read, the early read stopped.
    assert ids(cursor.open(world, epoch=7).batches) == fresh(plan, options, world, 7)
    assert opened[:3] == [0, 1, 7]
    assert wait_for_threads(before) == before
    # Another world, or a resumed stage, is another read too.
    ids(cursor.open(world, epoch=2, then=3).batches)
    other = World(0, 2)
    assert ids(cursor.open(other, epoch=3).batches) == fresh(plan, options, other, 3)
    assert wait_for_threads(before) == before


def test_a_pass_left_early_or_unshuffled_begins_nothing(plan: StreamPlan, opened: list[int]) -> None:
    shuffled = EpochCursor(plan, ReadOptions(shuffle=True, shuffle_buffer=256, batch_size=32))
    batches = shuffled.open(World(0, 1), epoch=0, then=1).batches
    list(itertools.islice(batches, 3))
    assert opened == [0]
    in_order = EpochCursor(plan, ReadOptions(shuffle=False, batch_size=32))
    ids(in_order.open(World(0, 1), epoch=0, then=1).batches)
    assert opened == [0, 0]


def test_a_read_begun_early_stops_when_its_cursor_goes(plan: StreamPlan) -> None:
    before = read_ahead_threads()
    cursor = EpochCursor(plan, ReadOptions(shuffle=True, shuffle_buffer=256, batch_size=32))
    ids(cursor.open(World(0, 1), epoch=0, then=1).batches)
    # A worker started by pickling the dataset gets the cursor without the read.
    copy = pickle.loads(pickle.dumps(cursor))
    assert ids(copy.open(World(0, 1), epoch=1).batches) == fresh(plan, cursor.options, World(0, 1), 1)
    del cursor, copy
    gc.collect()
    assert wait_for_threads(before) == before


def test_a_read_begun_early_raises_its_error_where_it_is_taken() -> None:
    def failing() -> Iterator[pa.RecordBatch]:
        yield from ()
        raise OSError("the store went away")

    owner = type("Owner", (), {})()
    started = StartedRead("key", None, failing(), owner=owner)
    batches = started.take()
    with pytest.raises(OSError, match="the store went away"):
        next(batches)


def test_a_read_dropped_before_its_first_batch_is_closed_once_it_comes() -> None:
    release = threading.Event()
    closed = threading.Event()

    def slow() -> Iterator[pa.RecordBatch]:
        try:
            release.wait()
            yield pa.record_batch({"id": np.arange(3)})
            yield pa.record_batch({"id": np.arange(3)})
        finally:
            closed.set()

    owner = type("Owner", (), {})()
    started = StartedRead("key", None, slow(), owner=owner)
    started.drop()
    assert not closed.is_set()
    release.set()
    assert closed.wait(10)


EXIT_AFTER_ONE_PASS = """
import sys
import pyarrow as pa, pyarrow.parquet as pq
from duckstream.stream import DuckStreamDataset, DuckStreamLoader
folder = sys.argv[1]
for index in range(4):
    ids = pa.array(range(index * 30_000, (index + 1) * 30_000), pa.int64())
    text = pa.array([f"caption number {i} " * 4 for i in range(30_000)])
    table = pa.table({"id": ids, "text": text})
    pq.write_table(table, f"{folder}/part-{index}.parquet", row_group_size=8_192)
sql = "SELECT id, text FROM source WHERE id % 2 = 0"
loader = DuckStreamLoader(DuckStreamDataset(folder, sql, batch_size=256, shuffle=True), num_workers=0)
rows = sum(len(batch["id"]) for batch in loader)
print(rows)
"""


@pytest.mark.slow
def test_a_process_that_ends_while_the_next_epoch_is_read_ends_cleanly(tmp_path: Path) -> None:
    # The next epoch's SQL is running in DuckDB when the interpreter exits; a thread stopped
    # there aborts the process ("terminate called without an active exception").
    for attempt in range(3):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        done = subprocess.run(
            [sys.executable, "-c", EXIT_AFTER_ONE_PASS, str(folder)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (done.returncode, done.stdout.strip()) == (0, "60000"), done.stderr[-2_000:]
        assert "terminate" not in done.stderr


def _read_in_child(cursor: EpochCursor, out: Any) -> None:
    out.put(ids(cursor.open(World(0, 1), epoch=5).batches))


def test_a_forked_copy_leaves_the_read_begun_early_to_its_parent(plan: StreamPlan) -> None:
    options = ReadOptions(shuffle=True, seed=2, shuffle_buffer=256, batch_size=32)
    cursor = EpochCursor(plan, options)
    ids(cursor.open(World(0, 1), epoch=0, then=1).batches)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_read_in_child, args=(cursor, out))
    child.start()
    assert out.get(timeout=60) == fresh(plan, options, World(0, 1), 5)
    child.join(60)
    assert child.exitcode == 0
    assert ids(cursor.open(World(0, 1), epoch=1).batches) == fresh(plan, options, World(0, 1), 1)
