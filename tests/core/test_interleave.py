"""The read order inside a slot (core.interleave), as pure properties: a permutation of the
slot's positions, each piece read as one run (two with a rotation), the same for the same key."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.interleave import Layout, interleave, order_left
from duckstream.core.order import epoch_order
from duckstream.core.ranges import as_ranges, expand, slice_ranges


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    counts = draw(st.lists(st.integers(1, 60), min_size=1, max_size=12))
    entries = tuple(
        np.asarray(sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=3)) - {n}), dtype=np.int64)
        for n in counts
    )
    anywhere = np.asarray(draw(st.lists(st.booleans(), min_size=len(counts), max_size=len(counts))))
    return Layout(np.asarray(counts, dtype=np.int64), entries, anywhere)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Layout, np.ndarray, int, np.ndarray, int, int, int]:
    layout = draw(layouts())
    total = layout.num_rows
    lo = draw(st.integers(0, total - 1))
    hi = draw(st.integers(lo + 1, total))
    # A slot's span: a run of positions, some cut out (a resumed stage), and padding after.
    holes = draw(st.sets(st.integers(lo, hi - 1), max_size=5))
    kept = [p for p in range(lo, hi) if p not in holes] or [lo]
    real = as_ranges([(p, p + 1) for p in kept])
    padding = slice_ranges(as_ranges([(0, total)]), 0, draw(st.integers(0, 3)))
    ranges = np.concatenate([real, padding])
    order = epoch_order(len(layout.counts), seed=draw(st.integers(0, 9)), epoch=0, shuffle=True)
    return (
        layout,
        ranges,
        len(kept),
        order,
        draw(st.integers(1, 20)),
        draw(st.integers(1, 40)),
        draw(st.integers(0, 3)),
    )


@settings(max_examples=300, deadline=None)
@given(cases())
def test_the_read_order_is_a_permutation_with_each_piece_read_in_one_run(
    case: tuple[Layout, np.ndarray, int, np.ndarray, int, int, int],
) -> None:
    layout, ranges, real, order, streams, stripe, seed = case
    key = (seed, 1, 0, 1, 0, 1, 0)
    read, owners = interleave(
        ranges, real, layout=layout, order=order, key=key, streams=streams, stripe=stripe
    )
    assert len(read) == len(owners)
    # Every position once, the padding last and as given.
    assert sorted(expand(read).tolist()) == sorted(expand(ranges).tolist())
    assert expand(read)[real:].tolist() == expand(ranges)[real:].tolist()
    # A piece (stream) lies in one shard and reads its rows as one run from where it starts,
    # round to its first row at most once.
    ends = np.cumsum(layout.counts[order])
    real_streams = owners[: len(read) - len(slice_ranges(ranges, real, 10**9))]
    for stream in np.unique(real_streams):
        positions = expand(read[: len(real_streams)][real_streams == stream])
        shards = np.searchsorted(ends, positions, side="right")
        assert len(set(shards.tolist())) == 1
        assert int((np.diff(positions) != 1).sum()) <= 1
    # The same key, the same order; one stream leaves the order as it was.
    again, _ = interleave(ranges, real, layout=layout, order=order, key=key, streams=streams, stripe=stripe)
    assert np.array_equal(read, again)
    unchanged, _ = interleave(ranges, real, layout=layout, order=order, key=key, streams=1, stripe=stripe)
    assert np.array_equal(unchanged, ranges)


def test_pieces_cut_to_fill_the_streams_never_outnumber_them() -> None:
    # A worker's share of 8 files of 2,500 rows among 3 workers: two whole files and the ends
    # of two more, shorter than a window. Cut into more pieces than streams, they were read in
    # two groups, one after the other, and the share kept 0.2 of its storage order.
    layout = Layout(
        np.array([2_500, 834, 2_500, 833]), [np.zeros(0, dtype=np.int64)] * 4, np.ones(4, dtype=bool)
    )
    ranges = as_ranges([(0, layout.num_rows)])
    for seed in range(5):
        read, owners = interleave(
            ranges,
            layout.num_rows,
            layout=layout,
            order=np.arange(4),
            key=(seed, 1, 0, 1, 0, 1, 0),
            streams=16,
            stripe=64,
            window=1_000,
        )
        assert len(np.unique(owners)) == 16
        # Every piece is read all along the share (in one group, not half of it in each of two).
        starts = np.cumsum(read[:, 1] - read[:, 0]) - (read[:, 1] - read[:, 0])
        for piece in np.unique(owners):
            where = starts[owners == piece] / layout.num_rows
            assert where.min() < 0.2
            assert where.max() > 0.8


def test_a_large_shard_is_entered_only_where_its_row_groups_start_when_pieces_are_many() -> None:
    # 40 large shards of four 10-row groups (160 pieces: read side by side, 16 at a time, they
    # keep almost no order) and one small shard longer than a window. Over many keys, reads of
    # the large shards start only at their row groups' first rows (nothing decoded to be
    # dropped); the small one is entered anywhere.
    large = 40
    layout = Layout(
        np.array([40] * large + [40]),
        (*(np.array([10, 20, 30]) for _ in range(large)), np.array([], dtype=np.int64)),
        np.array([False] * large + [True]),
    )
    rows = 40 * (large + 1)
    starts: dict[bool, set[int]] = {False: set(), True: set()}
    for seed in range(30):
        read, owners = interleave(
            np.array([[0, rows]]),
            rows,
            layout=layout,
            order=np.arange(large + 1),
            key=(seed,),
            streams=16,
            stripe=5,
            window=10,
        )
        for stream in np.unique(owners):
            first = int(read[owners == stream][0, 0])
            starts[first >= 40 * large].add(first % 40)
    assert starts[False] <= {0, 10, 20, 30}
    assert len(starts[True]) > 4


def _signed_spearman(read: np.ndarray) -> float:
    """Spearman's rho between read position and storage position (a permutation of 0..n-1)."""
    positions = expand(read).astype(np.float64)
    return float(np.corrcoef(np.arange(len(positions)), positions)[0, 1])


def test_few_large_pieces_start_anywhere_in_their_first_half_and_keep_no_order_on_average() -> None:
    # Four large shards of one 100-row group each, read side by side over a slot of 40 windows:
    # read front to back they keep a quarter of the storage order (rho 0.25 whatever the key).
    # Each now starts at a random row of its group's first half: rho is about 0 on average over
    # keys (a rotation by u and by 1 - u leave the same order).
    layout = Layout(np.full(4, 100), tuple(np.zeros(0, dtype=np.int64) for _ in range(4)), np.zeros(4, bool))
    firsts: set[int] = set()
    rhos = []
    for seed in range(200):
        read, owners = interleave(
            np.array([[0, 400]]),
            400,
            layout=layout,
            order=np.arange(4),
            key=(seed,),
            streams=16,
            stripe=2,
            window=10,
        )
        rhos.append(_signed_spearman(read))
        firsts.update(int(read[owners == stream][0, 0]) % 100 for stream in np.unique(owners))
    assert len(firsts) > 40
    assert max(firsts) < 50
    assert abs(float(np.mean(rhos))) < 0.03
    # The same pieces in a slot no longer than a window are left to the window to mix.
    read, _ = interleave(
        np.array([[0, 400]]),
        400,
        layout=layout,
        order=np.arange(4),
        key=(0,),
        streams=16,
        stripe=2,
        window=400,
    )
    assert _signed_spearman(read) > 0.2


def test_order_left_names_the_layouts_that_stay_ordered() -> None:
    def large(counts: list[int]) -> Layout:
        return Layout(
            np.array(counts), tuple(np.zeros(0, dtype=np.int64) for _ in counts), np.zeros(len(counts), bool)
        )

    # One or two large row groups keep much order even rotated; eight or more are mixed.
    assert order_left(large([20_000]), 1_000, 8) > 0.4
    assert order_left(large([10_000] * 2), 1_000, 8) > 0.1
    assert order_left(large([2_500] * 8), 1_000, 8) < 0.05
    assert order_left(large([1_000] * 64), 1_000, 8) < 0.02
    # One large shard of 64 row groups is 64 pieces.
    grouped = Layout(np.array([20_000]), (np.arange(1, 64) * 312,), np.array([False]))
    assert order_left(grouped, 1_000, 8) < 0.02
    # A window as large as the data, one stream, or small shards: nothing is left.
    assert order_left(large([20_000]), 20_000, 8) == 0.0
    assert order_left(large([20_000]), 1_000, 1) == 0.0
    small = Layout(np.array([20_000]), (np.zeros(0, dtype=np.int64),), np.array([True]))
    assert order_left(small, 1_000, 8) == 0.0
    # Ranks share the row groups: 8 keep little on one rank, much with 2 on each of 4, and a
    # row group cut between ranks is a piece on each.
    eight = large([2_500] * 8)
    assert order_left(eight, 1_000, 8, ranks=1) < order_left(eight, 1_000, 8, ranks=2) < 0.1
    assert order_left(eight, 1_000, 8, ranks=4) > 0.1
    assert order_left(large([20_000]), 1_000, 8, ranks=3) > 0.4
    # The estimate is for the rank that keeps the most: one of two ranks holds the large rows.
    mixed = Layout(
        np.array([10_000] + [100] * 100),
        tuple(np.zeros(0, np.int64) for _ in range(101)),
        np.array([False] + [True] * 100),
    )
    assert order_left(mixed, 1_000, 8, ranks=2) > 0.4 > order_left(mixed, 1_000, 8, ranks=1)


@settings(max_examples=100, deadline=None)
@given(groups=st.integers(2, 6), streams=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_every_group_of_pieces_lies_as_far_into_the_storage_as_the_others(
    groups: int, streams: int, seed: int
) -> None:
    # Shards of one large row group each, ``groups`` times as many as the streams: read in
    # groups, one after another. Dealt round and round, group g sat g shards later in the
    # storage than the first, and the order the groups were read in showed as order; dealt
    # back and forth, the groups' mean positions lie within (groups - 1) / rounds shards of
    # each other (the same, with an even number of rounds), and each holds as many rows.
    shards, size = groups * streams, 100
    layout = Layout(
        np.full(shards, size),
        tuple(np.zeros(0, dtype=np.int64) for _ in range(shards)),
        np.zeros(shards, bool),
    )
    read, _ = interleave(
        np.array([[0, shards * size]]),
        shards * size,
        layout=layout,
        order=np.arange(shards),
        key=(seed,),
        streams=streams,
        stripe=10,
    )
    means = [part.mean() for part in np.split(expand(read), groups)]
    assert max(means) - min(means) <= size * (groups - 1) / streams + 1e-9
    if streams % 2 == 0:
        assert max(means) - min(means) < 1e-9


def test_large_pieces_are_rotated_only_where_the_loop_would_see_their_order() -> None:
    # 16 large shards of one 100-row group, read side by side: alone they keep 1/16 of the
    # storage order (over KEPT_ORDER), and start anywhere; as one of two workers whose items
    # the loop interleaves, half that shows (under it), and each starts at its first row:
    # nothing is decoded twice for order no one would see.
    starts = {mixed: first_rows(16, mixed) for mixed in (1, 2)}
    assert len(starts[1]) > 20
    assert starts[2] == {0}


def test_pieces_whose_first_rows_a_read_can_hold_are_rotated_where_less_order_would_show() -> None:
    # The 16 shards above as one of two workers: 1/32 of the storage order shows (under
    # KEPT_ORDER, over HELD_KEPT_ORDER). Where a read can hold half a piece's rows, rotating
    # costs no decoding, so each starts anywhere in its first half; a slot that shows less
    # than HELD_KEPT_ORDER (64 such shards) is still left as it is.
    assert first_rows(16, 2, held_rows=49) == {0}  # half a piece does not fit
    rotated = first_rows(16, 2, held_rows=50)
    assert len(rotated) > 20
    assert max(rotated) < 50
    assert first_rows(64, 2, held_rows=50) == {0}


def first_rows(shards: int, mixed: int, *, held_rows: int = 0) -> set[int]:
    """Where the pieces of ``shards`` shards of one 100-row group each start reading, over 10
    keys, as one of ``mixed`` workers whose items the loop interleaves."""
    layout = Layout(
        np.full(shards, 100),
        tuple(np.zeros(0, dtype=np.int64) for _ in range(shards)),
        np.zeros(shards, bool),
        held_rows,
    )
    found: set[int] = set()
    for seed in range(10):
        read, owners = interleave(
            np.array([[0, 100 * shards]]),
            100 * shards,
            layout=layout,
            order=np.arange(shards),
            key=(seed,),
            streams=16,
            stripe=5,
            window=80,
            mixed=mixed,
        )
        found.update(int(read[owners == s][0, 0]) % 100 for s in np.unique(owners))
    return found
