"""One slot's share computed alone equals the share cut from the whole owed sequence, and the
counted replay equals the slot-by-slot replay it replaces."""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.interleave import Entries, Layout
from duckstream.core.owed import owed_rows, slot_span, stage_sequence
from duckstream.core.partition import Even, SlotSpan, partition, rank_rows, worker_rows
from duckstream.core.ranges import as_ranges, expand, length, merge_sorted, positions_to_ranges, slice_ranges
from duckstream.core.resume import (
    Stage,
    continuation,
    items_per_worker,
    next_worker,
    read_span,
    rows_emitted,
    worker_items,
)
from duckstream.core.shuffle import unread, window_key
from duckstream.core.world import World

# The partition and replay as first written, one slot after another: the reference.


def reference_partition(sequence: np.ndarray, world: World, even: Even) -> SlotSpan:
    total = length(sequence)
    ranks = [
        worker_rows(total, world.world_size)[r]
        if even == "split"
        else rank_rows(total, world.world_size, even)
        for r in range(world.world_size)
    ]
    sizes = worker_rows(ranks[world.rank], world.num_workers)
    begin = sum(ranks[: world.rank]) + sum(sizes[: world.worker])
    end = begin + sizes[world.worker]
    real_end = min(end, total)
    parts = [slice_ranges(sequence, begin, real_end)]
    pad_from, pad_count = max(begin, total) - total, end - max(begin, total)
    while pad_count > 0 and total > 0:
        start = pad_from % total
        take = min(pad_count, total - start)
        parts.append(slice_ranges(sequence, start, start + take))
        pad_from += take
        pad_count -= take
    return SlotSpan(np.concatenate(parts), max(0, real_end - begin))


def reference_spans(sequence: np.ndarray, stage: Stage, rank: int, even: Even) -> list[SlotSpan]:
    return [
        reference_partition(sequence, World(rank, stage.world_size, w, stage.num_workers), even)
        for w in range(stage.num_workers)
    ]


def reference_rows_emitted(sequence: np.ndarray, stage: Stage, world: World, even: Even) -> int:
    spans = reference_spans(sequence, stage, world.rank, even)
    items = [worker_items(span.rows, stage.batch_size, stage.drop_last) for span in spans]
    taken = items_per_worker(stage.consumed, items, stage.chunk, stage.staggered)[world.worker]
    return min(taken * stage.batch_size, spans[world.worker].rows)


def reference_stage_sequence(total: int, stages: list[Stage], layout: Layout | None, **kw: Any) -> np.ndarray:
    sequence = as_ranges([(0, total)])
    for index, stage in enumerate(stages):
        parts: list[np.ndarray] = []
        for rank in range(stage.world_size):
            for worker in range(stage.num_workers):
                world = World(rank, stage.world_size, worker, stage.num_workers)
                emitted = reference_rows_emitted(sequence, stage, world, kw["even"])
                key = window_key(kw["seed"], kw["epoch"], index, world)
                span, _, window_rows = read_span(
                    reference_partition(sequence, world, kw["even"]),
                    layout=layout,
                    key=key,
                    seed=kw["seed"],
                    epoch=kw["epoch"],
                    shuffle=kw["shuffle"],
                    streams=stage.streams,
                    buffer=stage.shuffle_buffer,
                    workers=stage.num_workers,
                )
                buffered, unread_from = unread(span.rows, emitted, window_rows, key, kw["shuffle"])
                buffered = buffered[buffered < span.real]
                if len(buffered):
                    lo = int(buffered[0])
                    window = expand(slice_ranges(span.ranges, lo, int(buffered[-1]) + 1))
                    parts.append(positions_to_ranges(window[buffered - lo]))
                parts.append(slice_ranges(span.ranges, unread_from, span.real))
        sequence = merge_sorted(parts)
    return sequence


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    counts = draw(st.lists(st.integers(1, 80), min_size=1, max_size=10))
    entries = tuple(
        np.asarray(sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=3)) - {n}), dtype=np.int64)
        for n in counts
    )
    anywhere = np.asarray(draw(st.lists(st.booleans(), min_size=len(counts), max_size=len(counts))))
    return Layout(np.asarray(counts, dtype=np.int64), entries, anywhere)


stages = st.builds(
    Stage,
    world_size=st.integers(1, 6),
    num_workers=st.integers(1, 4),
    batch_size=st.integers(1, 5),
    drop_last=st.booleans(),
    shuffle_buffer=st.integers(1, 40),
    chunk=st.integers(1, 3),
    streams=st.sampled_from([1, 2, 16]),
    staggered=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    layout=layouts(),
    plan=st.lists(st.tuples(stages, st.floats(0, 1)), max_size=3),
    current=stages,
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
    shuffle=st.booleans(),
    even=st.sampled_from(["pad", "drop", "split"]),
)
def test_a_slot_alone_gets_the_share_the_whole_sequence_gives_it(
    layout: Layout,
    plan: list[tuple[Stage, float]],
    current: Stage,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
) -> None:
    kw: dict[str, Any] = {"seed": seed, "epoch": epoch, "shuffle": shuffle, "even": even}
    total = layout.num_rows
    done: list[Stage] = []
    for stage, fraction in plan:
        sequence = stage_sequence(total, done, layout=layout, **kw)
        items = worker_items(rank_rows(length(sequence), stage.world_size, even), stage.batch_size, False)
        done.append(replace(stage, consumed=int(fraction * items)))
    sequence = stage_sequence(total, done, layout=layout, **kw)
    assert np.array_equal(sequence, reference_stage_sequence(total, done, layout, **kw))
    assert owed_rows(total, done, **kw) == length(sequence)
    for rank in range(current.world_size):
        for worker in range(current.num_workers):
            world = World(rank, current.world_size, worker, current.num_workers)
            whole = partition(sequence, world, even)
            alone = slot_span(total, done, world, layout=layout, **kw)
            assert np.array_equal(alone.ranges, whole.ranges)
            assert alone.real == whole.real
            assert np.array_equal(whole.ranges, reference_partition(sequence, world, even).ranges)


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(0, 300),
    stage=stages,
    consumed=st.integers(0, 400),
    even=st.sampled_from(["pad", "drop", "split"]),
    data=st.data(),
)
def test_counted_emission_matches_the_partitioned_one(
    total: int, stage: Stage, consumed: int, even: Even, data: st.DataObject
) -> None:
    sequence = as_ranges([(0, total)])
    stage = replace(stage, consumed=consumed)
    world = World(
        data.draw(st.integers(0, stage.world_size - 1)),
        stage.world_size,
        data.draw(st.integers(0, stage.num_workers - 1)),
        stage.num_workers,
    )
    assert rows_emitted(total, stage, world, even) == reference_rows_emitted(sequence, stage, world, even)
    spans = reference_spans(sequence, stage, world.rank, even)
    items = [worker_items(span.rows, stage.batch_size, stage.drop_last) for span in spans]
    offset = next_worker(stage.consumed, items, stage.chunk, stage.staggered)
    assert continuation(total, stage, world, even).worker == (world.worker + offset) % world.num_workers


@given(st.lists(st.lists(st.integers(0, 10**12), max_size=5), max_size=20))
def test_entries_hold_each_shards_offsets_flat(offsets: list[list[int]]) -> None:
    arrays = [np.asarray(o, dtype=np.int64) for o in offsets]
    layout = Layout(np.ones(len(arrays), dtype=np.int64), tuple(arrays), np.zeros(len(arrays), dtype=bool))
    assert isinstance(layout.entries, Entries)
    assert len(layout.entries) == len(arrays)
    for shard, array in enumerate(arrays):
        assert np.array_equal(layout.entries[shard], array)
    again = pickle.loads(pickle.dumps(layout))
    assert all(np.array_equal(again.entries[s], a) for s, a in enumerate(arrays))


def test_an_interleaved_stage_needs_the_layout() -> None:
    stage = Stage(2, 2, 1, False, 8, consumed=3, streams=16)
    kw: dict[str, Any] = {"seed": 0, "epoch": 0, "shuffle": True, "even": "pad"}
    with pytest.raises(ValueError, match="layout"):
        stage_sequence(100, [stage], **kw)
    with pytest.raises(ValueError, match="layout"):
        slot_span(100, [stage], World(0, 2), **kw)
