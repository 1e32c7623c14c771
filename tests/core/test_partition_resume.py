"""Exactly-once, balance and resume, checked by replaying what each slot emits."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.owed import stage_sequence
from duckstream.core.partition import Even, partition, rank_rows, worker_rows
from duckstream.core.ranges import as_ranges, expand, length, merge_sorted, slice_ranges
from duckstream.core.resume import (
    Stage,
    _worker_spread,
    first_transfer,
    items_per_worker,
    least_spread_chunk,
    next_worker,
    worker_items,
)
from duckstream.core.shuffle import emit_order, window_key
from duckstream.core.world import World


def rank_stream(
    sequence: np.ndarray,
    stage: Stage,
    index: int,
    rank: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
) -> list[list[tuple[int, bool]]]:
    """The items rank ``rank`` hands to its loop, each a list of (position, is_real)."""
    per_worker: list[list[list[tuple[int, bool]]]] = []
    for worker in range(stage.num_workers):
        world = World(rank, stage.world_size, worker, stage.num_workers)
        span = partition(sequence, world, even)
        key = window_key(seed, epoch, index, world)
        indices = emit_order(as_ranges([(0, span.rows)]), stage.shuffle_buffer, key, shuffle)
        positions = expand(span.ranges)
        rows = [(int(positions[i]), bool(i < span.real)) for i in indices]
        batches = [rows[i : i + stage.batch_size] for i in range(0, len(rows), stage.batch_size)]
        if stage.drop_last and batches and len(batches[-1]) < stage.batch_size:
            batches.pop()
        per_worker.append(batches)
    # DataLoader's order: one transfer per worker in turn, skipping exhausted workers; the
    # first transfers are staggered, then each is `chunk` items.
    out: list[list[tuple[int, bool]]] = []
    cursors = [0] * len(per_worker)
    sizes = _first_transfers(stage.chunk, len(per_worker), stage.staggered)
    while any(c < len(b) for c, b in zip(cursors, per_worker, strict=True)):
        for w, batches in enumerate(per_worker):
            out.extend(batches[cursors[w] : cursors[w] + sizes[w]])
            cursors[w] = min(len(batches), cursors[w] + sizes[w])
        sizes = [stage.chunk] * len(per_worker)
    return out


def _first_transfers(chunk: int, workers: int, staggered: bool) -> list[int]:
    """Items in each worker's first transfer (the reference): staggered, worker ``w`` of ``W``
    hands out ``(w + 1) * chunk // W`` (at least one) before whole chunks."""
    return [max(1, (w + 1) * chunk // workers) if staggered else chunk for w in range(workers)]


stages = st.builds(
    Stage,
    world_size=st.integers(1, 8),
    num_workers=st.integers(1, 4),
    batch_size=st.integers(1, 7),
    drop_last=st.booleans(),
    shuffle_buffer=st.integers(1, 40),
    chunk=st.integers(1, 4),
    staggered=st.booleans(),
)
whole_batches = stages.map(lambda stage: replace(stage, drop_last=False))
common = {
    "total": st.integers(0, 300),
    "seed": st.integers(0, 2**31),
    "epoch": st.integers(0, 50),
    "shuffle": st.booleans(),
    "even": st.sampled_from(["pad", "drop", "split"]),
}


@settings(max_examples=300, deadline=None)
@given(stage=whole_batches, **{**common, "even": st.sampled_from(["pad", "drop"])})
def test_one_epoch_reads_every_row_once_with_equal_ranks(
    stage: Stage, total: int, seed: int, epoch: int, shuffle: bool, even: Even
) -> None:
    sequence = as_ranges([(0, total)])
    streams = [
        rank_stream(sequence, stage, 0, r, seed=seed, epoch=epoch, shuffle=shuffle, even=even)
        for r in range(stage.world_size)
    ]
    rows_per_rank = {sum(len(item) for item in s) for s in streams}
    items_per_rank = {len(s) for s in streams}
    assert len(rows_per_rank) == 1
    assert len(items_per_rank) == 1
    real = Counter(p for s in streams for item in s for p, is_real in item if is_real)
    expected = total if even == "pad" else rank_rows(total, stage.world_size, "drop") * stage.world_size
    assert real == Counter(range(expected))
    # padding only ever repeats rows, and fewer than there are ranks: a rank reads ceil(total / ranks)
    padded = [p for s in streams for item in s for p, is_real in item if not is_real]
    assert len(padded) < stage.world_size if even == "pad" else not padded
    assert all(0 <= p < total for p in padded)


@settings(max_examples=300, deadline=None)
@given(first=stages, second=stages, third=stages, data=st.data(), **common)
def test_resume_under_any_new_world_reads_the_rest_once(
    first: Stage,
    second: Stage,
    third: Stage,
    data: st.DataObject,
    total: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
) -> None:
    kw: dict[str, Any] = {"seed": seed, "epoch": epoch, "shuffle": shuffle, "even": even}
    done: list[Stage] = []
    seen: Counter[int] = Counter()
    for index, stage in enumerate([first, second, third]):
        sequence = stage_sequence(total, done, **kw)
        streams = [rank_stream(sequence, stage, index, r, **kw) for r in range(stage.world_size)]
        last = index == 2
        consumed = len(streams[0]) if last else data.draw(st.integers(0, len(streams[0])))
        for stream in streams:
            seen.update(p for item in stream[:consumed] for p, real in item if real)
        done.append(Stage(**{**stage.__dict__, "consumed": consumed}))
    assert max(seen.values(), default=1) == 1, "a row was read twice"
    assert set(seen) <= set(range(total))
    # Lost: what "drop" leaves out for balance (fewer rows than ranks, per stage), and under
    # drop_last the partial batch (fewer rows than a batch) of each slot of the stage that ends
    # the epoch; the batches a stage did not hand out are owed to the next.
    allowed = sum(s.world_size - 1 for s in (first, second, third)) if even == "drop" else 0
    if third.drop_last:
        allowed += third.world_size * third.num_workers * (third.batch_size - 1)
    lost = total - len(seen)
    assert lost <= allowed, f"{lost} rows lost, at most {allowed} allowed"


@given(total=st.integers(0, 300), world_size=st.integers(1, 8), num_workers=st.integers(1, 4))
def test_split_policy_shares_rows_exactly_with_ranks_one_row_apart(
    total: int, world_size: int, num_workers: int
) -> None:
    sequence = as_ranges([(0, total)])
    spans = [
        [partition(sequence, World(r, world_size, w, num_workers), "split") for w in range(num_workers)]
        for r in range(world_size)
    ]
    per_rank = [sum(span.rows for span in rank) for rank in spans]
    assert max(per_rank) - min(per_rank) <= 1
    positions = sorted(p for rank in spans for span in rank for p in expand(span.ranges).tolist())
    assert positions == list(range(total))


@given(total=st.integers(0, 200), stage=stages, data=st.data())
def test_owed_rows_are_what_was_not_handed_out(total: int, stage: Stage, data: st.DataObject) -> None:
    kw: dict[str, Any] = {"seed": 1, "epoch": 2, "shuffle": True, "even": "pad"}
    sequence = as_ranges([(0, total)])
    streams = [rank_stream(sequence, stage, 0, r, **kw) for r in range(stage.world_size)]
    consumed = data.draw(st.integers(0, len(streams[0])))
    handed = {p for s in streams for item in s[:consumed] for p, real in item if real}
    owed = stage_sequence(total, [Stage(**{**stage.__dict__, "consumed": consumed})], **kw)
    assert set(expand(owed).tolist()) == set(range(total)) - handed
    assert np.all(np.diff(expand(owed)) > 0)


def test_a_single_row_still_feeds_thirty_two_slots_evenly() -> None:
    sequence = as_ranges([(0, 1)])
    spans = [partition(sequence, World(r, 4, w, 8), "pad") for r in range(4) for w in range(8)]
    assert {span.rows for span in spans} == {0, 1}
    assert sum(span.real for span in spans) == 1
    per_rank = [sum(spans[r * 8 + w].rows for w in range(8)) for r in range(4)]
    assert per_rank == [1, 1, 1, 1]


def test_drop_policy_never_pads() -> None:
    sequence = as_ranges([(0, 10)])
    spans = [partition(sequence, World(r, 3, 0, 1), "drop") for r in range(3)]
    assert [span.rows for span in spans] == [3, 3, 3]
    assert all(span.real == span.rows for span in spans)


@pytest.mark.parametrize(
    ("consumed", "items", "expected"),
    [
        (0, [3, 2], [0, 0]),
        (3, [3, 2], [2, 1]),
        (4, [3, 2], [2, 2]),
        (5, [3, 2], [3, 2]),
        (9, [3, 2], [3, 2]),
        (5, [1, 4, 4], [1, 2, 2]),
        (2, [0, 5], [0, 2]),
    ],
)
def test_items_per_worker_follows_dataloader_round_robin(
    consumed: int, items: list[int], expected: list[int]
) -> None:
    assert items_per_worker(consumed, items) == expected


def _served(items: list[int], chunk: int, staggered: bool) -> list[int]:
    """The worker of each item, as DataLoader's round robin hands out transfers (the reference)."""
    left, order = list(items), []
    sizes = _first_transfers(chunk, len(items), staggered)
    while any(left):
        for worker, n in enumerate(left):
            take = min(sizes[worker], n)
            order += [worker] * take
            left[worker] -= take
        sizes = [chunk] * len(items)
    return order


@given(
    items=st.lists(st.integers(0, 30), min_size=1, max_size=5),
    chunk=st.integers(1, 7),
    staggered=st.booleans(),
    data=st.data(),
)
def test_chunked_round_robin_matches_dataloader(
    items: list[int], chunk: int, staggered: bool, data: st.DataObject
) -> None:
    served = _served(items, chunk, staggered)
    consumed = data.draw(st.integers(0, len(served) + 3))
    head = served[:consumed]
    assert items_per_worker(consumed, items, chunk, staggered) == [head.count(w) for w in range(len(items))]
    assert next_worker(consumed, items, chunk, staggered) == (
        served[consumed] if consumed < len(served) else 0
    )


def test_worker_rows_and_items() -> None:
    assert worker_rows(10, 3) == [4, 3, 3]
    assert worker_items(10, 4, drop_last=False) == 3
    assert worker_items(10, 4, drop_last=True) == 2


@given(
    pairs=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=8),
    lo=st.integers(0, 60),
    hi=st.integers(0, 60),
)
def test_slice_ranges_matches_slicing_the_expanded_sequence(
    pairs: list[tuple[int, int]], lo: int, hi: int
) -> None:
    ranges = as_ranges(pairs)
    assert expand(slice_ranges(ranges, lo, hi)).tolist() == expand(ranges)[lo:hi].tolist()
    assert length(ranges) == len(expand(ranges))


@given(cuts=st.lists(st.integers(0, 100), unique=True, max_size=20))
def test_merge_sorted_joins_adjacent_and_sorts(cuts: list[int]) -> None:
    cuts = sorted(cuts)
    pieces = [as_ranges([(a, b)]) for a, b in zip(cuts[::2], cuts[1::2], strict=False)]
    merged = merge_sorted(pieces[::-1])
    covered = sorted(p for a, b in zip(cuts[::2], cuts[1::2], strict=False) for p in range(a, b))
    assert expand(merged).tolist() == covered
    # joined: no two ranges touch or overlap
    assert np.all(merged[1:, 0] > merged[:-1, 1])


@settings(max_examples=200, deadline=None)
@given(workers=st.integers(2, 8), data=st.data())
def test_the_chosen_chunk_leaves_the_workers_items_apart_by_less_as_they_grow(
    workers: int, data: st.DataObject
) -> None:
    # Where each of 2-8 workers has few items (as many as the workers or more, the last
    # maybe short), the workers' mean places in the loop of the chosen chunk lie apart by
    # under 1 / items of the places' spread; the chunk of least linear lag (the rule before)
    # left up to 1.2 / items (8 workers of 20 items), as many as the workers but at most half
    # the items (the rule before that) more.
    items = data.draw(st.integers(workers, 63))
    last = data.draw(st.integers(1, 64)) / 64
    chunk = least_spread_chunk(workers, items, 2 * workers, last)
    assert 1 <= chunk <= min(items, 2 * workers)
    assert _worker_spread(workers, items, chunk, last) * (items - 1 + last) < 1.0


def loop_places(
    workers: int, items: int, chunk: int, last: float, rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's place in the loop and its worker, items of ``rows`` rows taken in the
    staggered round robin (the last of ``last * rows``)."""
    sizes = [rows] * (items - 1) + [round(last * rows)]
    left = [list(sizes) for _ in range(workers)]
    owners: list[int] = []
    first = True
    while any(left):
        for worker in range(workers):
            size = first_transfer(chunk, workers, worker) if first else chunk
            owners += [worker] * sum(left[worker][:size])
            del left[worker][:size]
        first = False
    return np.arange(len(owners)), np.array(owners)


@settings(max_examples=100, deadline=None)
@given(
    workers=st.integers(2, 6),
    items=st.integers(1, 12),
    chunk=st.integers(1, 12),
    last=st.integers(1, 8),
    values=st.lists(st.integers(-3, 3), min_size=6, max_size=6),
)
def test_the_workers_spread_bounds_the_order_anything_of_a_worker_shows(
    workers: int, items: int, chunk: int, last: int, values: list[int]
) -> None:
    # Whatever each worker's rows are (their mean id, here `values`), the correlation between
    # a row's place in the loop and its worker's value is at most the spread.
    places, owners = loop_places(workers, items, chunk, last / 8, 640)
    of_worker = np.asarray(values[:workers])[owners]
    if of_worker.std() == 0 or len(places) < 2:
        return
    correlation = abs(np.corrcoef(places, of_worker)[0, 1])
    assert correlation <= _worker_spread(workers, items, chunk, last / 8) + 1e-3


def test_the_spread_of_staggered_transfers_is_the_order_the_loop_sees_from_workers() -> None:
    # 4 workers of 5 items: transfers of 2 (half a worker's items) put worker 0 first in
    # every round (|rho| 0.145 through the loader, 8 ranks); of 4, they balance (0.031).
    assert _worker_spread(4, 5, 2) > 0.2
    assert _worker_spread(4, 5, 4) < 0.04
    assert least_spread_chunk(4, 5, 8) == 4
    # 6 whole batches and one of 10 rows: 3 a chunk leaves little linear lag by worker
    # number, but workers 1 and 2 late, 0 and 3 early, and where their rows lie apart
    # otherwise (40 small files over 8 ranks) one rank's epoch kept 0.110; 4 a chunk, 0.075.
    places, owners = loop_places(4, 7, 3, 10 / 64, 64)
    assert abs(np.corrcoef(places, owners)[0, 1]) < 0.015
    assert _worker_spread(4, 7, 3, 10 / 64) > 0.12
    assert least_spread_chunk(4, 7, 8, 10 / 64) == 4
    assert _worker_spread(4, 7, 4, 10 / 64) < 0.07
    # 2 workers of an even count cancel at 2 a chunk; one worker has no spread.
    assert _worker_spread(2, 10, 2) == pytest.approx(0.0, abs=1e-12)
    assert _worker_spread(1, 10, 3) == 0.0
