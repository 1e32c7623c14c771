"""Which rotated pieces' first rows a shuffled read keeps: planned without I/O."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.held_heads import Piece, held_heads, rotations, stream_indices
from duckstream.core.pipeline import _stream_pieces

Read = tuple[np.ndarray, np.ndarray, list[int]]


def shards_read(rows: list[int], turns: list[int], stripes: list[int], seed: int) -> Read:
    """Shards of ``rows`` each (in epoch order, one stream each), shard ``s`` read from row
    ``turns[s]`` round to it in ``stripes[s]`` stripes, the streams' stripes interleaved in a
    random order: the ranges (epoch positions) in read order, their streams, and the rows."""
    ends = np.cumsum(rows)
    per_stream: list[list[tuple[int, int]]] = []
    for shard, (count, turn, parts) in enumerate(zip(rows, turns, stripes, strict=True)):
        begin = int(ends[shard]) - count
        cut = np.linspace(0, count, parts + 1).astype(int)
        ranges = []
        for lo, hi in zip(cut[:-1].tolist(), cut[1:].tolist(), strict=True):
            if lo == hi:
                continue
            # Rows lo..hi of the rotated order: from `turn` to the end, then from the first.
            first, last = (lo + turn) % count, (hi + turn - 1) % count + 1
            if first < last:
                ranges.append((begin + first, begin + last))
            else:
                ranges += [(begin + first, begin + count), (begin, begin + last)]
        per_stream.append([r for r in ranges if r[0] < r[1]])
    streams = np.repeat(np.arange(len(rows)), [len(r) for r in per_stream])
    order = np.random.default_rng(seed).permutation(streams)
    taken = [0] * len(rows)
    read, owners = [], []
    for stream in order.tolist():
        read.append(per_stream[stream][taken[stream]])
        owners.append(stream)
        taken[stream] += 1
    return np.asarray(read, dtype=np.int64).reshape(-1, 2), np.asarray(owners, dtype=np.int64), rows


def kept_heads(ranges: np.ndarray, owners: np.ndarray, rows: list[int], budget: int) -> frozenset[Piece]:
    """``held_heads`` of a read of shards of ``rows`` each in epoch order, as the read finds it."""
    sizes = np.asarray(rows, dtype=np.int64)
    ends, order = np.cumsum(sizes), np.arange(len(rows))
    streams = stream_indices(owners)
    return held_heads(ranges, streams, _stream_pieces(ranges, streams, order, sizes, ends), budget)


def alive(read: Read, head: Piece) -> tuple[int, int]:
    """The ranges from the first of the head's piece to the one that reads the head's last row."""
    ranges, owners, rows = read
    shard, _, hi = head
    begin = int(np.cumsum(rows)[shard]) - rows[shard]
    mine = np.flatnonzero(owners == shard)
    first = int(mine[0])
    last = next(int(i) for i in mine if ranges[i, 0] <= begin + hi - 1 < ranges[i, 1])
    return first, last


def test_a_stream_s_rotations_are_its_pieces_followed_by_the_rows_before_them() -> None:
    pieces = [(3, 40, 100), (3, 0, 40), (5, 0, 10), (7, 20, 30), (7, 10, 20), (3, 100, 120)]
    assert rotations(pieces) == [(0, (3, 0, 40)), (3, (7, 10, 20))]
    assert rotations([(3, 0, 100), (4, 0, 10)]) == []


def test_heads_are_kept_smallest_first_while_those_read_at_once_fit() -> None:
    read = shards_read([1_000, 1_000, 1_000], turns=[300, 100, 500], stripes=[8, 8, 8], seed=0)
    fits = kept_heads(*read, budget=900)
    assert fits == {(0, 0, 300), (1, 0, 100), (2, 0, 500)}
    # 400 rows hold the two smallest heads (100 + 300); 599 the same (the third is 500).
    assert kept_heads(*read, budget=400) == {(0, 0, 300), (1, 0, 100)}
    assert kept_heads(*read, budget=599) == {(0, 0, 300), (1, 0, 100)}
    assert kept_heads(*read, budget=99) == frozenset()


def test_heads_read_one_after_another_each_take_the_whole_budget() -> None:
    # One stream reading shard 0 then shard 1, each rotated: their heads are never held at once.
    ranges = np.array([[40, 100], [0, 40], [170, 200], [100, 170]], dtype=np.int64)
    kept = kept_heads(ranges, np.zeros(4, dtype=np.int64), [100, 100], budget=70)
    assert kept == {(0, 0, 40), (1, 0, 70)}


@settings(max_examples=200, deadline=None)
@given(
    shards=st.lists(
        st.tuples(st.integers(1, 400), st.floats(0.0, 0.99), st.integers(1, 6)), min_size=1, max_size=10
    ),
    budget=st.integers(0, 1_500),
    seed=st.integers(0, 1_000),
)
def test_the_heads_kept_at_any_range_fit_the_budget_and_no_other_would(
    shards: list[tuple[int, float, int]], budget: int, seed: int
) -> None:
    rows = [count for count, _, _ in shards]
    turns = [int(turn * count) for count, turn, _ in shards]
    read = shards_read(rows, turns, [parts for _, _, parts in shards], seed)
    kept = kept_heads(*read, budget=budget)
    heads = {(shard, 0, turn) for shard, turn in enumerate(turns) if turn}
    assert kept <= heads
    load = np.zeros(len(read[0]), dtype=np.int64)
    for head in kept:
        first, last = alive(read, head)
        load[first : last + 1] += head[2] - head[1]
    assert load.max(initial=0) <= budget
    for head in heads - kept:
        first, last = alive(read, head)
        assert load[first : last + 1].max() + head[2] - head[1] > budget
