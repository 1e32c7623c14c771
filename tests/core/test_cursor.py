"""The epoch cursor, without torch: exact resume, state forms and refusals."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duckstream.core.cursor import EpochCursor
from duckstream.core.options import ReadOptions
from duckstream.core.planning import StreamPlan, prepare
from duckstream.core.resume import Stage
from duckstream.core.state import ORDER_REVISION, slot_state
from duckstream.core.world import World
from duckstream.errors import ConfigurationError, StateError
from duckstream.storage import S3Settings

ROWS = 523


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> StreamPlan:
    folder = tmp_path_factory.mktemp("cursor")
    # Uneven files and row groups, so that stages cut through them.
    bounds = [0, 200, 201, 390, ROWS]
    for index, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        table = pa.table({"id": pa.array(range(lo, hi), pa.int64())})
        pq.write_table(table, folder / f"part-{index}.parquet", row_group_size=37)
    return prepare(str(folder), s3=S3Settings.resolve())


def ids(batches: object) -> list[int]:
    return [i for batch in batches for i in batch.column("id").to_pylist()]  # type: ignore[attr-defined]


def test_an_interrupted_epoch_resumes_exactly_in_a_new_cursor(plan: StreamPlan) -> None:
    options = ReadOptions(shuffle=True, seed=3, shuffle_buffer=64, batch_size=10)
    whole = ids(EpochCursor(plan, options).open(World(0, 1)).batches)
    first = EpochCursor(plan, options)
    first.set_epoch(0)
    read = first.open(World(0, 1))
    taken = ids(itertools.islice(read.batches, 7))
    first.advance(7)
    state = first.state_dict(first.stage(world_size=1, consumed=first.consumed))
    second = EpochCursor(plan, options)
    assert second.load_state_dict(state) is None
    assert taken + ids(second.open(World(0, 1)).batches) == whole
    assert sorted(whole) == list(range(ROWS))


def test_a_finished_pass_saves_the_next_epoch(plan: StreamPlan) -> None:
    cursor = EpochCursor(plan, ReadOptions(shuffle=True, batch_size=100))
    cursor.set_epoch(4)
    cursor.advance(6)
    cursor.finish()
    state = cursor.state_dict(cursor.stage(world_size=1, consumed=6))
    assert (state["epoch"], state["stages"]) == (5, [])
    cursor.begin_pass(1)
    assert (cursor.epoch, cursor.done, cursor.consumed, cursor.finished) == (4, [], 0, False)
    with pytest.raises(ConfigurationError, match="non-negative"):
        cursor.set_epoch(-1)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.integers(1, 4),
    after=st.integers(1, 4),
    batch_size=st.integers(1, 40),
    take=st.integers(0, 30),
    shuffle=st.booleans(),
    seed=st.integers(0, 3),
)
def test_every_row_once_across_a_resume_under_another_world_size(
    plan: StreamPlan, before: int, after: int, batch_size: int, take: int, shuffle: bool, seed: int
) -> None:
    options = ReadOptions(shuffle=shuffle, seed=seed, shuffle_buffer=50, even="split", batch_size=batch_size)
    cursor = EpochCursor(plan, options)
    seen: Counter[int] = Counter()
    # Every rank of the first world takes `take` items (fewer where its share is shorter).
    for rank in range(before):
        seen.update(ids(itertools.islice(cursor.open(World(rank, before)).batches, take)))
    state = cursor.state_dict(cursor.stage(world_size=before, consumed=take))
    resumed = EpochCursor(plan, options)
    resumed.load_state_dict(state)
    for rank in range(after):
        seen.update(ids(resumed.open(World(rank, after)).batches))
    assert sorted(seen) == list(range(ROWS))
    assert set(seen.values()) == {1}


def test_a_workers_own_progress_only_continues_the_setup_it_was_saved_under(plan: StreamPlan) -> None:
    cursor = EpochCursor(plan, ReadOptions(shuffle=True, shuffle_buffer=40, batch_size=8))
    saved = Stage(2, 2, 8, False, 40, 3, 1, cursor.streams)
    worker_state = slot_state(cursor.state([]), worker=1, stage=saved)
    resume = cursor.load_state_dict(worker_state)
    assert resume is not None
    assert (resume.role, resume.stage, resume.prior) == (1, saved, ())
    with pytest.raises(StateError, match="resumes under the setup it was saved with"):
        cursor.open(World(0, 1, 0, 2), resume=resume)
    read = cursor.open(World(0, 2, 0, 2), resume=resume)
    assert (read.start.world.worker, read.start.items, read.start.emitted) == (1, 3, 24)
    assert cursor.slot_state_dict(read, 2)["slot"] == {
        "worker": 1,
        "stage": {**worker_state["slot"]["stage"], "consumed": 5},
    }


def test_a_row_count_state_is_tied_to_its_plan(plan: StreamPlan, tmp_path: Path) -> None:
    cursor = EpochCursor(plan, ReadOptions())
    assert cursor.read_rows_state(cursor.rows_state(17)) == 17
    assert cursor.read_rows_state({"rows": 9}) == 9  # saved before states held a version
    pq.write_table(pa.table({"id": [1, 2, 3]}), tmp_path / "other.parquet")
    other = EpochCursor(prepare(str(tmp_path), s3=S3Settings.resolve()), ReadOptions())
    with pytest.raises(StateError, match="another plan"):
        other.read_rows_state(cursor.rows_state(17))
    with pytest.raises(StateError, match="version"):
        cursor.read_rows_state({**cursor.rows_state(1), "version": 99})


def test_a_state_saved_mid_epoch_under_another_read_order_is_refused(plan: StreamPlan) -> None:
    # Its stages' rows are found by replaying the order they were read in: replayed in another,
    # rows handed out would be taken for others. Saved at an epoch's end, or unshuffled, any
    # revision resumes.
    def saved(shuffle: bool, take: int) -> dict[str, object]:
        cursor = EpochCursor(plan, ReadOptions(shuffle=shuffle, seed=1, shuffle_buffer=64, batch_size=10))
        cursor.set_epoch(2)
        cursor.advance(take)
        return cursor.state_dict(cursor.stage(world_size=1, consumed=take))

    mid_epoch = saved(True, 7)
    assert mid_epoch["order"] == ORDER_REVISION
    earlier = {k: v for k, v in mid_epoch.items() if k != "order"}  # as builds before revisions
    shuffled = EpochCursor(plan, ReadOptions(shuffle=True, seed=1, shuffle_buffer=64, batch_size=10))
    for state, revision in ((earlier, 1), ({**mid_epoch, "order": ORDER_REVISION + 1}, ORDER_REVISION + 1)):
        with pytest.raises(StateError, match=rf"epoch 2 .*revision {revision}, .*set_epoch\(2\)"):
            shuffled.load_state_dict(state)
    with pytest.raises(StateError, match=r"state\['order'\]"):
        shuffled.load_state_dict({**mid_epoch, "order": "2"})
    at_epoch_start = {k: v for k, v in saved(True, 0).items() if k != "order"}
    shuffled.load_state_dict(at_epoch_start)
    assert (shuffled.epoch, shuffled.done) == (2, [])
    in_order = EpochCursor(plan, ReadOptions(shuffle=False, seed=1, shuffle_buffer=64, batch_size=10))
    in_order.load_state_dict({k: v for k, v in saved(False, 7).items() if k != "order"})
    assert (in_order.epoch, [s.consumed for s in in_order.done]) == (2, [7])
    # A stretch that handed out the whole epoch (53 items of 10 rows; StatefulDataLoader keeps
    # it so) owes nothing in any order; one item less is the middle of the epoch.
    assert sum(1 for _ in EpochCursor(plan, ReadOptions(batch_size=10)).open(World()).batches) == 53
    shuffled.load_state_dict({k: v for k, v in saved(True, 53).items() if k != "order"})
    assert [s.consumed for s in shuffled.done] == [53]
    with pytest.raises(StateError, match="middle of epoch 2"):
        shuffled.load_state_dict({k: v for k, v in saved(True, 52).items() if k != "order"})
    # One worker's own stretch: 27 of worker 1's 27 items (262 rows and 261 for 2 workers).
    base = {k: v for k, v in saved(True, 0).items() if k != "order"}
    for items, refused in ((27, False), (26, True)):
        stage = shuffled.stage(world_size=1, num_workers=2, consumed=items)
        own = slot_state(base, worker=1, stage=stage)
        if refused:
            with pytest.raises(StateError, match="middle of epoch 2"):
                shuffled.load_state_dict(own)
        else:
            assert shuffled.load_state_dict(own) is not None


def test_a_row_count_of_another_read_order_is_refused_where_it_skips_shuffled_rows(plan: StreamPlan) -> None:
    # A Hugging Face examples iterable skips the first rows of its slot's order: counted in
    # another order, they are other rows.
    shuffled = EpochCursor(plan, ReadOptions(shuffle=True, seed=1))
    assert shuffled.read_rows_state(shuffled.rows_state(17)) == 17
    assert shuffled.read_rows_state({"rows": 0}) == 0
    with pytest.raises(StateError, match=r"middle of epoch .*revision 1, .*Start that epoch over"):
        shuffled.read_rows_state({"rows": 9})
    assert EpochCursor(plan, ReadOptions(shuffle=False)).read_rows_state({"rows": 9}) == 9
