"""The read order inside one slot: its shards read side by side, so that every shuffle window
holds rows from all over the data, not from one shard after another.

A slot's rows are runs of consecutive rows of shards (*pieces*). Read one after another, even
in a random order, an epoch keeps much of the storage order: a window of the shuffle buffer
holds one shard's neighbouring rows, and the epoch's first tenth is a few shards' rows. Here
up to ``streams`` pieces are read at once, each from where it starts to its end and on from
its first row to where it started (a *rotation*, so that no piece's first rows always come
first), in *stripes* of about ``buffer / (4 * streams)`` rows, the stripes of all pieces
interleaved evenly over the stretch of the epoch they share; a window is permuted whole, so a
piece's stripes in one window are then read in one run (:func:`_by_window`). A slot with more
pieces reads them in groups, one after another: the pieces are dealt to the groups so that
every group's rows lie, on the whole, in the middle of the slot's storage, with about as many
rows each (:func:`_deal`). Inside a group, pieces next to each other in storage take times far
apart (:func:`_spread_slots`), so that every window of the group's stretch holds pieces from
all over the storage. A piece much larger than the others (:func:`_outsize`) is not dealt to a
group, whose stretch of the epoch it would fill, but read over the whole slot by a stream of
its own beside the groups (in a slot of two windows, so are the largest pieces where there are
fewer than twice the streams: a group is then a window); past half the streams, such pieces of
small shards are cut into parts dealt to several groups (:func:`_cut_left`).

Each piece is one sequential read (two with a rotation): its decoder continues where the last
stripe stopped. Pieces are cut where row groups start, and a read starts at a row group's
first row where that is enough, so that nothing is decoded only to be dropped. A piece of a
small shard that is longer than a window (a buffer set smaller than a row group) is entered
anywhere in its row group, and cut into several when a slot has few pieces (any piece of a
small shard, where fewer pieces than streams are spread over a slot longer than a window:
each one's rows are then spread over several windows), into more than the streams where one
holds so much of the slot that fewer parts would keep its order in sight. A piece of a large
shard keeps its order over the stretch it is read in: a slot of few of them would keep about
``sum(rows**2 * group rows) / slot rows**3`` of its storage order (|Spearman|; ``1 / k`` for
``k`` equal pieces read side by side; ``1 / workers`` of it shows once a rank's DataLoader
workers' items are interleaved). Where what shows passes :data:`KEPT_ORDER`, each such piece
starts at a random row of its first half (:data:`LARGE_REACH`) instead, which decodes the rows
before it twice (a quarter of the piece, on average), unless the read can keep them for their
turn (a shuffle window's bytes of such rows, the smallest first: see
:mod:`duckstream.core.held_heads`), and leaves a correlation of ``1 - 6 u (1 - u)`` for a rotation
by a fraction ``u``: zero on average, about ``0.45 / k**1.5`` for ``k`` pieces. Pieces whose
first half the read can keep are rotated from :data:`HELD_KEPT_ORDER` on: for them it costs no
decoding. The price of the cheaper half: a piece's second half never starts the epoch.
Fewer than about five large pieces stay visibly ordered (:func:`order_left`); only a larger
window or smaller row groups mend that at a bounded cost, so a file of them is read from a copy
in smaller row groups where it can be (see :mod:`duckstream.core.recut`). The read order is a
pure function of the slot's rows and a key: which rows a slot has emitted after ``n`` is known
without reading.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from duckstream.core.order import seeded_rng
from duckstream.core.ranges import length, slice_ranges
from duckstream.core.shuffle import SHUFFLE_BUFFER_BYTES

__all__ = [
    "DEFAULT_STREAMS",
    "Entries",
    "Layout",
    "Layouts",
    "interleave",
    "layout_of",
    "order_left",
    "stripe_rows",
    "visible_order",
]

# Above this |Spearman| (one standard deviation) the order a read leaves shows in the epoch.
LEFT_ORDER_WARNING = 0.05
# Pieces read at once: enough that a window mixes rows from all over a slot's share; each
# holds a decoder and a stripe, so memory stays near one shuffle window.
DEFAULT_STREAMS = 16
# Stripes of each stream a window holds. A piece's rows fall into windows a stripe at a time,
# so a window holds one stripe more or less of it than its share: with one stripe a window,
# a piece of a few stripes over a slot of a few windows was in some windows and not in
# others (8 ranks of 4,346 rows, a 1,000-row buffer: |Spearman| median 0.026, 90th
# percentile 0.071 over 20 seeds); four make that a quarter (0.012, 0.041). Over 80 source
# shapes, 20 seeds each, the mean of the medians went 0.0149 -> 0.0127, and none was worse.
STRIPES_A_WINDOW = 4
_MIN_STRIPE_ROWS = 16
# Storage order (|Spearman|) the loop may see from a slot's pieces read front to back before
# they are rotated, at a cost: a quarter of each decoded twice, on average, and its row group's
# first pages once more. The bench's captions (32 row groups of 9 MB), which keep 0.02 in one
# process and 0.04 with two workers, took 35% longer epochs rotated that way; their first rows
# fit HELD_HEAD_BYTES, so they are rotated at no cost instead (HELD_KEPT_ORDER).
KEPT_ORDER = 0.05
# Where what the loop sees passes this much but not KEPT_ORDER, only pieces whose first rows
# (before a rotation) fit HELD_HEAD_BYTES are rotated: the read decodes them once and keeps
# them for their turn (see duckstream.core.held_heads), so the rotation costs no decoding. The
# bench's captions at two workers, seeds 0-11: |Spearman| median 0.033 -> 0.024, most 0.073 ->
# 0.044, epochs as long.
HELD_KEPT_ORDER = 0.01
# The heads a read is sure to keep: 16 of them, one a stream, fit a shuffle window's bytes
# (the read keeps heads within that, the smallest first).
HELD_HEAD_BYTES = SHUFFLE_BUFFER_BYTES // DEFAULT_STREAMS
# A large piece starts in its first half: a rotation by u leaves a correlation 1 - 6u(1 - u),
# the same for u and 1 - u, so drawn from [0, 1/2) it is distributed as from [0, 1) (mean 0),
# for a quarter of the piece decoded twice on average instead of a half.
LARGE_REACH = 0.5
# A piece this many times a group member's share of a slot's rows is read over the whole
# slot (see _outsize). Equal pieces never are: each holds less than twice a member's share.
SPANNING_SHARE = 2.0
# Groups of a slot with at most this many pieces are evened out by swaps after the deal
# (see _swap_to_even: a pass over every pair of pieces; more pieces even out on their own).
_SWAPPED_PIECES = 64
# The correlation (one standard deviation) a piece read over the whole slot may leave
# before it is cut into parts, each read from a random row (see _spread).
SPREAD_LEFT = 0.02
# The variance of 1 - 6 u (1 - u) for u uniform in [0, 1/2): what a rotated piece leaves.
_ROTATED_VARIANCE = 0.2
# What rotations leave is random: at one standard deviation of LEFT_ORDER_WARNING the largest
# of five seeds passes twice that one time in five (a row group of a third of a rank's rows
# among 60 small files, 0.0498: not copied, |Spearman| 0.101 in 10 seeds), at 1.25 one in 16.
_ROTATED_MARGIN = 1.25


@dataclass(frozen=True)
class Entries:
    """Per shard, an array of offsets, held as one flat array cut at ``bounds`` (a million
    shards are two arrays, not a million)."""

    flat: np.ndarray
    bounds: np.ndarray  # shard i's offsets are flat[bounds[i]:bounds[i + 1]]

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> Entries:
        sizes = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.concatenate([np.asarray(a, dtype=np.int64) for a in arrays]) if len(arrays) else bounds[:0]
        return cls(flat.astype(np.int64), bounds)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, shard: int) -> np.ndarray:
        return self.flat[self.bounds[shard] : self.bounds[shard + 1]]


@dataclass(frozen=True)
class Layout:
    """What the read order needs to know of a plan's shards.

    ``counts``: rows each shard yields; ``entries``: per shard, the offsets (in rows it
    yields, after its first) where a read can start without decoding rows it drops (its row
    groups' first rows), kept as :class:`Entries` whatever sequence of arrays is given;
    ``anywhere``: per shard, whether starting elsewhere costs little (a small shard);
    ``held_rows``: the rows before a rotation that a read keeps instead of decoding them twice
    (:data:`HELD_HEAD_BYTES` of rows).
    """

    counts: np.ndarray
    entries: Entries | Sequence[np.ndarray]
    anywhere: np.ndarray
    held_rows: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.entries, Entries):
            object.__setattr__(self, "entries", Entries.of(self.entries))

    @property
    def num_rows(self) -> int:
        return int(self.counts.sum())


# A plan's layout, or the layout for a world size (StreamPlan.layout_for): which files a read
# takes from a copy in smaller row groups depends on how many ranks share them.
Layouts: TypeAlias = Layout | Callable[[int], Layout]


def layout_of(layouts: Layouts | None, world_size: int) -> Layout | None:
    """The layout a read by ``world_size`` ranks orders."""
    return layouts if layouts is None or isinstance(layouts, Layout) else layouts(world_size)


def stripe_rows(buffer: int, streams: int) -> int:
    """Rows of a stripe: a shuffle window holds about :data:`STRIPES_A_WINDOW` stripes of each
    stream."""
    return max(_MIN_STRIPE_ROWS, buffer // max(1, streams * STRIPES_A_WINDOW))


def interleave(
    ranges: np.ndarray,
    real: int,
    *,
    layout: Layout,
    order: np.ndarray,
    key: tuple[int, ...],
    streams: int,
    stripe: int,
    window: int | None = None,
    mixed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The slot's positions (``ranges``, the first ``real`` not padding) in read order, and
    the stream (piece) each returned range belongs to.

    Positions are epoch positions: shards in ``order``, each yielding ``layout.counts`` rows.
    Padding (rows repeated to even the ranks) is read last, as it was given. One stream
    returns the ranges unchanged. Only pieces of small shards longer than a ``window``
    (default: ``stripe * streams``) are entered anywhere inside a row group: a shorter one is
    mixed by the windows it lands in. Pieces of large shards are entered inside a row group
    only where the slot, longer than a window, would keep more than :data:`KEPT_ORDER` of its
    storage order otherwise (:data:`HELD_KEPT_ORDER` for pieces whose first half the read can
    keep, ``layout.held_rows``), in what the loop receives: the items of ``mixed`` slots (a
    rank's DataLoader workers) interleaved, each slot's order shows ``1 / mixed`` as much.
    """
    longer = stripe * streams if window is None else window
    if streams <= 1 or real == 0:
        return ranges, np.arange(len(ranges), dtype=np.int64)
    sizes = layout.counts[order]
    ends = np.cumsum(sizes)
    pieces = _pieces(slice_ranges(ranges, 0, real), ends, sizes, layout, order)
    # Pieces a read may enter anywhere: those of small shards longer than a window, and the
    # parts they are cut into. Where fewer pieces than streams are spread over a slot longer
    # than a window, every piece's rows are too: a piece shorter than a window is no longer
    # mixed by the one window it would land in, so those of small shards are cut too.
    few = len(pieces) < streams and real > longer
    entered = {p for p in pieces if layout.anywhere[int(order[p[2]])] and (few or p[1] - p[0] > longer)}
    if len(pieces) < streams and entered:
        pieces, entered = _split_small(pieces, entered, streams, stripe)
    pieces, entered, spread = _spread(pieces, entered, streams, stripe, longer)
    anywhere = np.asarray(layout.anywhere, dtype=bool)[order]
    pieces, entered = _cut_left(pieces, entered, spread, anywhere, streams)
    rng = seeded_rng("interleave", *key)
    # Storage order (shards are planned in it): the pieces dealt to groups, read one group
    # after another, but for the outsize ones, each read over the whole slot beside them.
    by_storage = sorted(range(len(pieces)), key=lambda p: (int(order[pieces[p][2]]), pieces[p][0]))
    lengths = [pieces[p][1] - pieces[p][0] for p in by_storage]
    spanning = {i for i, p in enumerate(by_storage) if pieces[p] in spread}
    grouped = [i for i in range(len(by_storage)) if i not in spanning]
    groups = -(-len(grouped) // (streams - len(spanning)))
    middles = np.cumsum(lengths) - np.asarray(lengths) / 2 - real / 2
    dealt = _deal([lengths[i] for i in grouped], middles[grouped].tolist(), groups, streams - len(spanning))
    group_rows = np.bincount(dealt, weights=[lengths[i] for i in grouped], minlength=groups)
    # Pieces read front to back (not entered anywhere) keep order; past KEPT_ORDER, in a slot
    # the windows alone do not mix, every piece starts at a random row (see the module doc).
    # A piece keeps order over the stretch it is read in: its group's, or the whole slot.
    stretch = np.full(len(by_storage), float(real))
    stretch[grouped] = group_rows[dealt]
    fixed = np.array([pieces[p] not in entered for p in by_storage], dtype=bool)
    kept = _kept(np.asarray(lengths, dtype=np.float64)[fixed], stretch[fixed], real)
    shows = kept / max(1, mixed) if real > longer else 0.0
    rotated, held = shows > KEPT_ORDER, shows > HELD_KEPT_ORDER
    # A piece read front to back over the whole slot keeps its share squared of the order on
    # its own: past SPREAD_LEFT it starts at a random row of its first half, whatever the
    # others keep (it is one piece: a quarter of it decoded twice, on average).
    turned = {
        by_storage[i]
        for i in spanning
        if fixed[i] and real > longer and (lengths[i] / real) ** 2 / max(1, mixed) > SPREAD_LEFT
    }

    def striped(member: int, phase: float) -> tuple[np.ndarray, np.ndarray]:
        """A piece's stripes (two ranges each), at times spread evenly over [0, 1)."""
        lo, hi, index = pieces[member]
        begin = int(ends[index] - sizes[index])
        entries = layout.entries[int(order[index])]
        small = pieces[member] in entered
        turns = rotated or member in turned or (held and LARGE_REACH * (hi - lo) <= layout.held_rows)
        reach = 1.0 if small else LARGE_REACH if turns else 0.0
        rotation = _rotation(lo - begin, hi - begin, entries, rng, reach=reach)
        cut = _stripes(lo, hi, rotation, stripe)
        count = len(cut) // 2
        return cut, (np.arange(count) + phase) / count

    read: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    # When each stripe is read, in rows of the groups read so far: a group's stripes over
    # its own stretch, a spanning piece's over all of them.
    clock: list[np.ndarray] = []
    done = 0.0
    for group in rng.permutation(groups):
        parts, owners, times = [], [], []
        members = [by_storage[grouped[i]] for i in np.flatnonzero(dealt == group).tolist()]
        # Phases spread evenly (each in its own slice of a stripe's time, the slices dealt so
        # that pieces near in storage are far apart in time): any stretch of the read holds
        # about as many stripes of every piece, and pieces from all over the storage.
        phases = (_spread_slots(len(members), rng) + rng.random(len(members))) / len(members)
        for member, phase in zip(members, phases, strict=True):
            cut, when = striped(member, phase)
            parts.append(cut)
            owners.append(np.full(len(cut), member, dtype=np.int64))
            times.append(when)
        # Each stripe is two rows of `cut` (the second empty unless it wraps): sort stripes by
        # time, keeping each stripe's two rows together and in order.
        when = np.concatenate(times)
        stripes = np.argsort(when, kind="stable")
        rows = np.stack([2 * stripes, 2 * stripes + 1], axis=1).reshape(-1)
        read.append(np.concatenate(parts)[rows])
        owner.append(np.concatenate(owners)[rows])
        clock.append(done + when[stripes] * group_rows[group])
        done += float(group_rows[group])
    if spanning:
        for index in sorted(spanning):
            member = by_storage[index]
            cut, when = striped(member, float(rng.random()))
            read.append(cut)
            owner.append(np.full(len(cut), member, dtype=np.int64))
            clock.append(when * done)
        # Groups' stripes stay in their order (their clocks never decrease); a spanning
        # piece's fall between them.
        stripes = np.argsort(np.concatenate(clock), kind="stable")
        rows = np.stack([2 * stripes, 2 * stripes + 1], axis=1).reshape(-1)
        read, owner = [np.concatenate(read)[rows]], [np.concatenate(owner)[rows]]
    ordered = np.concatenate(read)
    owned = np.concatenate(owner)
    keep = ordered[:, 1] > ordered[:, 0]
    ordered, owned = _by_window(ordered[keep], owned[keep], longer)
    padding = slice_ranges(ranges, real, length(ranges))
    return (
        np.concatenate([ordered, padding]).astype(np.int64),
        np.concatenate([owned, len(pieces) + np.arange(len(padding), dtype=np.int64)]),
    )


def _by_window(ranges: np.ndarray, owners: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``ranges`` (read by ``owners``) with each stream's stripes in a window of ``window``
    rows read in one run, where the stream first reads in that window, and joined.

    A window is permuted whole, so only which window a row falls in shows: stripes a quarter
    of a stream's share of a window place its rows finely among the windows (see
    :data:`STRIPES_A_WINDOW`), and joined, they are read as one share was (a range of 16
    rows of 8 B costs as much as one of 64). Streams keep their order of first reads, so a
    stream that ended before another began still does: no more are open at once."""
    if len(ranges) == 0 or window <= 0:
        return ranges, owners
    sizes = ranges[:, 1] - ranges[:, 0]
    ends = np.cumsum(sizes)
    begins = ends - sizes
    # Ranges cut where windows end: piece k of range i lies in window first[i] + k.
    first = begins // window
    count = (ends - 1) // window - first + 1
    index = np.repeat(np.arange(len(ranges)), count)
    which = first[index] + np.arange(len(index)) - np.repeat(np.cumsum(count) - count, count)
    lo = np.maximum(begins[index], which * window) - begins[index] + ranges[index, 0]
    hi = np.minimum(ends[index], (which + 1) * window) - begins[index] + ranges[index, 0]
    owner = owners[index]
    # Each (window, stream) pair read where the stream first reads in that window.
    pair = which * (int(owner.max()) + 1) + owner
    _, first_read, pair_of = np.unique(pair, return_index=True, return_inverse=True)
    order = np.argsort(first_read[pair_of], kind="stable")
    lo, hi, owner = lo[order], hi[order], owner[order]
    starts = np.ones(len(lo), dtype=bool)
    starts[1:] = (owner[1:] != owner[:-1]) | (lo[1:] != hi[:-1])
    head = np.flatnonzero(starts)
    tail = np.append(head[1:] - 1, len(lo) - 1)
    return np.stack([lo[head], hi[tail]], axis=1), owner[head]


def _kept(rows: np.ndarray, group_rows: np.ndarray, total: int) -> float:
    """The |Spearman| a slot of ``total`` rows keeps from pieces of ``rows`` read front to back,
    each over the stretch of its group (``group_rows``): a piece of ``n`` rows read over a
    stretch of ``m`` positions adds ``n**2 m / total**3`` (``1 / k`` for ``k`` equal pieces)."""
    if total <= 0:
        return 0.0
    return float(np.sum(rows**2 * group_rows)) / float(total) ** 3


def order_left(layout: Layout, window: int, streams: int, ranks: int = 1) -> float:
    """About how much storage order (|Spearman|) a shuffled read of ``layout``'s rows keeps
    after rotating its large pieces (see the module docstring), on the rank that keeps the
    most when ``ranks`` share the rows: 0 where small shards, windows or many pieces mix the
    rows. What rotations leave is random, counted at :data:`_ROTATED_MARGIN` standard
    deviations.

    Pieces are row groups, read ``streams`` at a time; each rank is taken to read one
    stretch of the storage (an epoch deals it random shards of about the same sizes) in one
    slot: DataLoader workers only lower what the loop sees (see :func:`interleave`).
    """
    if streams <= 1 or layout.num_rows <= window:
        return 0.0
    entries = layout.entries
    assert isinstance(entries, Entries)
    # Every shard's row groups as (shard, first row), sorted: each ends where the next starts.
    shards = len(layout.counts)
    owner = np.concatenate([np.arange(shards), np.repeat(np.arange(shards), np.diff(entries.bounds))])
    first = np.concatenate([np.zeros(shards, dtype=np.int64), entries.flat])
    ordered = np.lexsort((first, owner))
    owner, first = owner[ordered], first[ordered]
    last = np.append(owner[1:] != owner[:-1], True)
    stop = np.where(last, np.asarray(layout.counts)[owner], np.append(first[1:], 0))
    keep = stop > first
    rows, large = (stop - first)[keep], ~np.asarray(layout.anywhere, dtype=bool)[owner[keep]]
    if not large.any():
        return 0.0
    # The pieces cut where each rank's stretch of the storage ends.
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
    total = int(rows.sum())
    cuts = np.union1d(starts, (np.arange(ranks) * total) // ranks)
    piece = np.searchsorted(starts, cuts, side="right") - 1
    length = np.diff(np.append(cuts, total)).astype(np.float64)
    rank = np.minimum(ranks - 1, (cuts * ranks) // total)
    large = large[piece] & (length > 0)
    left = 0.0
    for r in range(ranks):
        mine = rank == r
        share = float(length[mine].sum())
        if share <= window:
            continue
        read = mine & (length > 0)
        pieces = length[read]
        # Outsize pieces are read over the whole share, the others in groups (see interleave).
        spanning = np.zeros(len(pieces), dtype=bool)
        spanning[sorted(_outsize(pieces.astype(np.int64).tolist(), streams, window))] = True
        own = int(spanning.sum())
        groups = max(1, -(-(len(pieces) - own) // (streams - own)))
        stretch = np.where(spanning, share, share / groups)
        # Each large piece's share of the order (see _kept): their sum read front to back,
        # and what rotations leave (see _ROTATED_MARGIN): every piece's past KEPT_ORDER, else
        # those read over the whole share that keep more than SPREAD_LEFT on their own.
        fixed = large[read]
        terms = pieces**2 * stretch / share**3
        turned = fixed if terms[fixed].sum() > KEPT_ORDER else fixed & spanning & (terms > SPREAD_LEFT)
        kept = float(terms[fixed & ~turned].sum())
        rotated = float(np.sqrt(_ROTATED_VARIANCE * np.sum(terms[turned] ** 2)))
        left = max(left, kept + _ROTATED_MARGIN * rotated)
    return left


def visible_order(layout: Layout, window: int, streams: int, ranks: int = 1) -> float:
    """:func:`order_left`, or 0 where no large piece is long enough to leave
    :data:`LEFT_ORDER_WARNING` of a rank's order (a piece keeps at most its share of the
    rank's rows): the estimate takes a second for a million shards."""
    fixed = ~np.asarray(layout.anywhere, dtype=bool)
    largest = int(np.max(np.asarray(layout.counts)[fixed], initial=0))
    if largest * ranks <= LEFT_ORDER_WARNING * layout.num_rows:
        return 0.0
    return order_left(layout, window, streams, ranks)


def _spread(
    pieces: list[tuple[int, int, int]],
    entered: set[tuple[int, int, int]],
    streams: int,
    stripe: int,
    window: int,
) -> tuple[list[tuple[int, int, int]], set[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """The pieces read over the whole slot, each by a stream of its own (see :func:`_outsize`),
    those a read may enter anywhere cut into as many parts as keep their order out of sight:
    the pieces, those entered anywhere, and those read over the whole slot.

    A piece holding a share ``s`` of the slot, read over all of it from a random row, leaves
    a correlation of about ``0.45 s**2`` (one standard deviation, see :data:`_ROTATED_VARIANCE`);
    ``k`` parts, each from a random row, ``0.45 s**2 / k**1.5``: cut until that is
    :data:`SPREAD_LEFT` or less (:func:`_hiding_parts`), within half the streams. Each cut
    decodes the rows of the row group before it once more (a file of 20,000 rows among 30,000
    in 60 small files, one process, a 1,000-row buffer: |Spearman| median 0.062 read whole,
    0.016 in 3 parts).
    """
    rows = [hi - lo for lo, hi, _ in pieces]
    total = float(sum(rows))
    wanted = [
        _hiding_parts(count, total, stripe) if piece in entered else 1
        for piece, count in zip(pieces, rows, strict=True)
    ]
    chosen = _outsize(rows, streams, window, wanted)
    if not chosen:
        return pieces, entered, set()
    return _cut_each(pieces, {pieces[index]: count for index, count in chosen.items()}, entered)


def _cut_left(
    pieces: list[tuple[int, int, int]],
    entered: set[tuple[int, int, int]],
    spread: set[tuple[int, int, int]],
    anywhere: np.ndarray,
    streams: int,
) -> tuple[list[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """The pieces left to the groups, with those more than :data:`SPANNING_SHARE` times a
    member's share that a read may enter anywhere (``anywhere[index]``: of a small shard) cut
    into parts of at most that, each entered anywhere: the pieces and those entered anywhere.

    Half the streams at most read outsize pieces over the whole slot (:func:`_outsize`); the
    next largest stayed whole in a group, and a group is read over its own stretch of the
    slot, so such a piece's rows fell in a few windows (80 files of 10-3,340 rows, a 1,000-row
    buffer, one process: files of 450-980 rows in one of 9 groups, |Spearman| median 0.055
    over 20 seeds). Its parts are dealt to several groups. A cut decodes nothing again: the
    parts of a small row group slice it decoded once (see duckstream.core.shared_groups).
    """
    left = [piece for piece in pieces if piece not in spread]
    free = streams - len(spread)
    if free <= 0 or len(left) <= free:
        return pieces, entered
    groups = -(-len(left) // free)
    most = SPANNING_SHARE * sum(hi - lo for lo, hi, _ in left) / (groups * free)
    counts = {
        piece: int(np.ceil((piece[1] - piece[0]) / most))
        for piece in left
        if piece[1] - piece[0] > most and anywhere[piece[2]]
    }
    found, now_entered, parts = _cut_each(pieces, counts, entered)
    return found, now_entered | parts


def _outsize(
    rows: Sequence[int], streams: int, window: int, wanted: Sequence[int] | None = None
) -> dict[int, int]:
    """The pieces (``rows`` each) read over the whole slot, not in a group, and the streams
    each takes (``wanted`` parts at most, see :func:`_spread`; default one): those more than
    :data:`SPANNING_SHARE` times a group member's share of the rows, largest first, half the
    streams at most; where a group holds no more than a window, only those that also hold a
    ``2 * streams``-th of the slot's rows.

    Groups are read one after another. A group dealt an outsize piece holds fewer others, so
    its stretch of the epoch is mostly that piece's rows: one file of 5,000 rows among 60 of
    500, read by one process with a 1,000-row buffer, kept |Spearman| 0.16-0.2 for 3 seeds of 5.
    Groups shorter than a window are mixed by the windows, but a piece holding much of the
    slot still lands in few of them (150 files, the largest 7% of the rows, two windows:
    0.070 median over 20 seeds in a group, 0.022 read over the whole slot). Streams taken
    from the groups leave more of them: 600 row groups of 28 rows on average, the largest
    516, two windows: 0.004 -> 0.034 (median of 5 seeds) where the 8 largest were read over
    the whole slot. The largest pieces take the parts they want before smaller ones take a
    stream: a row group of a third of a slot read whole kept 0.1 (one of 20 files, 2 ranks)
    where the 8 streams went to it and 7 pieces of a tenth to a third its size.

    A slot of two windows or less and fewer than ``2 * streams`` pieces (two groups, each a
    window) reads its largest ``2 * streams - pieces`` over the whole slot, whatever their
    share, and still two groups of the rest: a piece in a group lands in one window, one half
    of the slot (20 files of 700-2,068 rows, one process: |Spearman| median 0.088 -> 0.023
    over 20 seeds; 0.019 with the groups balanced on where their pieces lie, :func:`_deal`).
    Longer groups keep no such order, and a large piece read front to back over the whole slot
    keeps more than in a group (20 files of 3,000 rows of 4 KiB: 0.022 -> 0.033).
    """
    if len(rows) <= streams:
        return {}
    total = left = float(sum(rows))
    chosen: dict[int, int] = {}
    few = max(0, 2 * streams - len(rows)) if total <= 2 * window else 0
    for piece in sorted(range(len(rows)), key=lambda p: -rows[p]):
        if len(chosen) < few:
            chosen[piece] = 1
            left -= rows[piece]
            continue
        taken = sum(chosen.values())
        groups = -(-(len(rows) - len(chosen)) // (streams - taken))
        share = left / (groups * (streams - taken))
        if taken >= streams // 2 or rows[piece] <= SPANNING_SHARE * share:
            break
        if left / groups <= window and rows[piece] < total / (2 * streams):
            break
        chosen[piece] = min(1 if wanted is None else wanted[piece], streams // 2 - taken)
        left -= rows[piece]
    return chosen


def _spread_slots(count: int, rng: np.random.Generator) -> np.ndarray:
    """A slot of time for each of ``count`` pieces in storage order: a random permutation in
    which any run of consecutive slots (a window) holds pieces from all over the storage.

    The van der Corput sequence with a random digital shift: piece ``i`` takes the rank of
    ``reverse_bits(i) ^ shift``, so pieces next to each other in storage fall in opposite
    halves of the time, in opposite quarters of each half, and so on."""
    if count <= 1:
        return np.zeros(count, dtype=np.int64)
    bits = int(count - 1).bit_length()
    index = np.arange(count, dtype=np.int64)
    reversed_bits = np.zeros(count, dtype=np.int64)
    for bit in range(bits):
        reversed_bits |= ((index >> bit) & 1) << (bits - 1 - bit)
    keys = reversed_bits ^ int(rng.integers(1 << bits))
    slots: np.ndarray = np.argsort(np.argsort(keys, kind="stable"), kind="stable")
    return slots


def _deal(rows: Sequence[int], middles: Sequence[float], groups: int, members: int) -> np.ndarray:
    """The group each piece (``rows`` each, its middle row ``middles`` rows after the middle of
    the slot's storage) is read in, so that each group's rows lie, on the whole, in the middle
    of the storage: pieces of the largest ``rows * middle`` (*moment*) first, each to the group
    whose moments sum furthest the other way (of those, the least loaded), among those with
    fewer than ``members`` pieces and no more than their share of the rows and the largest
    piece after it (else the least loaded with room).

    Groups are read one after another, in a random order, so a group whose pieces lie later
    in storage than another's shows as order. Dealt in storage order, back and forth, each to
    the group holding the fewest rows (equal rows in each, but storage spans left uneven by
    pieces of unequal size), over 160 source shapes (20 seeds each, read order simulated) the
    mean of the |Spearman| medians was 0.0121 / 0.0096 (shapes 0-79 / 80-159), of the 90th
    percentiles 0.0245 / 0.0210; so (and with :func:`_swap_to_even`), 0.0103 / 0.0087 and
    0.0215 / 0.0190, 30 shapes better and 13 worse. 40 files of 24-1,765 rows, one process, a
    1,000-row buffer: 0.041 -> 0.013; a file of 13,000 rows between 14 of 500 (its parts read
    over the whole slot, the small files in two groups, one holding 4 of the first 7): 0.053
    -> 0.009.
    """
    sizes = np.asarray(rows, dtype=np.float64)
    moments = sizes * np.asarray(middles, dtype=np.float64)
    most = sizes.sum() / groups + sizes.max(initial=0.0)
    dealt = np.zeros(len(sizes), dtype=np.int64)
    loads = np.zeros(groups)
    sums = np.zeros(groups)
    counts = np.zeros(groups, dtype=np.int64)
    for piece in np.argsort(-np.abs(moments), kind="stable").tolist():
        room = np.flatnonzero(counts < members)
        fits = room[loads[room] + sizes[piece] <= most]
        if not len(fits):
            fits = room[[int(np.argmin(loads[room]))]]
        side = sums[fits] if moments[piece] > 0 else -sums[fits]
        group = int(fits[np.lexsort((loads[fits], side))[0]])
        dealt[piece] = group
        loads[group] += sizes[piece]
        sums[group] += moments[piece]
        counts[group] += 1
    if len(sizes) <= _SWAPPED_PIECES:
        _swap_to_even(dealt, moments.tolist(), sizes.tolist(), most)
    return dealt


def _swap_to_even(dealt: np.ndarray, moments: list[float], sizes: list[float], most: float) -> None:
    """Swap pieces between the groups of ``dealt`` (in place) while a swap brings the two
    groups' sums of ``moments`` nearer their mean, keeping each group's rows (``sizes``) under
    ``most``: up to four passes over every pair.

    The deal takes the largest moments first and cannot undo a choice: with every group's
    pieces capped, the last ones fell where there was room (8 files of 717-946 rows left to
    two groups of 4, the largest moments paired in one: the groups' sums apart by 85% of the
    largest moment, against 1% at best; |Spearman| median 0.046 over 10 seeds, 0.010 swapped).
    """
    groups = int(dealt.max(initial=0)) + 1
    sums = [0.0] * groups
    loads = [0.0] * groups
    for piece, group in enumerate(dealt.tolist()):
        sums[group] += moments[piece]
        loads[group] += sizes[piece]
    mean = sum(sums) / groups
    for _ in range(4):
        swapped = False
        for first, second in itertools.combinations(range(len(moments)), 2):
            one, other = int(dealt[first]), int(dealt[second])
            if one == other:
                continue
            shift = moments[second] - moments[first]
            before = (sums[one] - mean) ** 2 + (sums[other] - mean) ** 2
            after = (sums[one] + shift - mean) ** 2 + (sums[other] - shift - mean) ** 2
            grows = sizes[second] - sizes[first]
            if after >= 0.999 * before or max(loads[one] + grows, loads[other] - grows) > most:
                continue
            dealt[first], dealt[second] = other, one
            sums[one] += shift
            sums[other] -= shift
            loads[one] += grows
            loads[other] -= grows
            swapped = True
        if not swapped:
            break


def _pieces(
    ranges: np.ndarray, ends: np.ndarray, sizes: np.ndarray, layout: Layout, order: np.ndarray
) -> list[tuple[int, int, int]]:
    """``ranges`` cut where shards end and where row groups start: ``(lo, hi, index in the
    epoch order)``. A shard of several row groups is several pieces, read side by side."""
    found: list[tuple[int, int, int]] = []
    for start, stop in ranges:
        position, index = int(start), int(np.searchsorted(ends, start, side="right"))
        while position < stop:
            end = min(int(stop), int(ends[index]))
            begin = int(ends[index] - sizes[index])
            entries = layout.entries[int(order[index])] + begin
            for cut in [*entries[(entries > position) & (entries < end)].tolist(), end]:
                found.append((position, int(cut), index))
                position = int(cut)
            index += 1
    return found


def _split_small(
    pieces: list[tuple[int, int, int]],
    entered: set[tuple[int, int, int]],
    streams: int,
    stripe: int,
) -> tuple[list[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """Fewer pieces than streams: the pieces a read may enter anywhere cut into several, read
    side by side, in proportion to their rows, into no more pieces than streams but where
    one piece wants more parts to keep its order out of sight (:func:`_hiding_parts`).

    A cut inside a row group costs decoding the rows before it once more, which a small shard
    pays for little. More pieces than streams would be read in two groups, one after the
    other: the pieces of the second group only in the second half of the slot's read (a
    worker's share of 8 files cut in 18 pieces kept 0.2 of its storage order). But a piece of
    most of the slot among many small ones got the few streams to spare: a file of 13,000
    rows between 14 of 500 was read in two parts, each a third of the slot from a random row
    (|Spearman| up to 0.14). Its parts are read over the whole slot (see :func:`_outsize`),
    the small pieces in groups beside them.
    """
    cuttable = [piece for piece in pieces if piece in entered]
    rows = np.array([hi - lo for lo, hi, _ in cuttable], dtype=np.int64)
    most = np.maximum(1, rows // stripe)
    parts = _apportioned(rows, streams - (len(pieces) - len(cuttable)), most)
    total = sum(hi - lo for lo, hi, _ in pieces)
    hiding = [min(_hiding_parts(count, total, stripe), streams // 2) for count in rows.tolist()]
    parts = np.maximum(parts, hiding)
    found, now_entered, _ = _cut_each(pieces, dict(zip(cuttable, parts.tolist(), strict=True)), entered)
    return found, now_entered


def _hiding_parts(rows: int, total: float, stripe: int) -> int:
    """Parts a piece of ``rows`` of a slot's ``total`` is cut into, each read over the whole
    slot from a random row, so that what their rotations leave (about ``0.45 share**2 /
    parts**1.5``, see :func:`_spread`) is :data:`SPREAD_LEFT` or less: at most one a stripe."""
    left = np.sqrt(_ROTATED_VARIANCE) * (rows / total) ** 2
    wanted = max(1, int(np.ceil((left / SPREAD_LEFT) ** (2 / 3))))
    return min(wanted, max(1, rows // stripe))


def _cut_each(
    pieces: list[tuple[int, int, int]],
    counts: dict[tuple[int, int, int], int],
    entered: set[tuple[int, int, int]],
) -> tuple[list[tuple[int, int, int]], set[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """``pieces`` with each one in ``counts`` cut into that many parts (:func:`_cut`): the
    pieces, those entered anywhere (an entered piece's parts in its place), and the parts."""
    found: list[tuple[int, int, int]] = []
    now_entered = set(entered)
    parts: set[tuple[int, int, int]] = set()
    for piece in pieces:
        if piece not in counts:
            found.append(piece)
            continue
        cut = _cut(piece, counts[piece])
        found.extend(cut)
        parts.update(cut)
        if piece in entered:
            now_entered.discard(piece)
            now_entered.update(cut)
    return found, now_entered, parts


def _cut(piece: tuple[int, int, int], count: int) -> list[tuple[int, int, int]]:
    """``piece`` (rows ``lo..hi`` of the shard at epoch index ``index``) in ``count`` about
    equal consecutive parts."""
    lo, hi, index = piece
    bounds = lo + np.arange(count + 1, dtype=np.int64) * (hi - lo) // count
    return [(int(a), int(b), index) for a, b in itertools.pairwise(bounds.tolist())]


def _apportioned(rows: np.ndarray, budget: int, most: np.ndarray) -> np.ndarray:
    """Parts for pieces of ``rows`` each: at least one, at most ``most``, in all at most
    ``budget`` (where that leaves each one), in proportion to their rows (largest
    remainders first, ties to the earlier piece)."""
    parts = np.ones(len(rows), dtype=np.int64)
    spare = budget - len(rows)
    if spare <= 0 or not len(rows):
        return parts
    share = spare * rows / max(1, int(rows.sum()))
    parts += np.minimum(np.floor(share).astype(np.int64), most - 1)
    left = budget - int(parts.sum())
    for piece in np.argsort(-(share - np.floor(share)), kind="stable"):
        if left <= 0:
            break
        if parts[piece] < most[piece]:
            parts[piece] += 1
            left -= 1
    return parts


def _rotation(lo: int, hi: int, entries: np.ndarray, rng: np.random.Generator, *, reach: float) -> int:
    """Where a piece of rows ``lo..hi`` of a shard starts reading, from ``lo``: a row group's
    first row (``entries``), else a row in the first ``reach`` of the piece (0: its first)."""
    inside = entries[(entries > lo) & (entries < hi)]
    if len(inside):
        return int(rng.choice(np.concatenate([[lo], inside]))) - lo
    if reach >= 1.0:
        return int(rng.integers(hi - lo))
    if reach > 0.0:
        return int(rng.random() * reach * (hi - lo))
    return 0


def _stripes(lo: int, hi: int, rotation: int, stripe: int) -> np.ndarray:
    """Rows ``lo..hi`` from ``lo + rotation`` round to it, in stripes of about ``stripe``
    rows: two ranges a stripe, the second empty unless the stripe wraps to ``lo``."""
    rows = hi - lo
    count = max(1, -(-rows // stripe))
    bounds = np.arange(count + 1, dtype=np.int64) * rows // count + rotation
    first, last = bounds[:-1], bounds[1:]
    # Offsets past the end wrap to the piece's first row.
    head_stop = np.minimum(last, rows)
    head_start = np.where(first >= rows, first - rows, first)
    head_stop = np.where(first >= rows, last - rows, head_stop)
    tail_stop = np.where((first < rows) & (last > rows), last - rows, 0)
    cut = np.empty((2 * count, 2), dtype=np.int64)
    cut[0::2, 0], cut[0::2, 1] = lo + head_start, lo + head_stop
    cut[1::2, 0], cut[1::2, 1] = lo, lo + tail_stop
    return cut
