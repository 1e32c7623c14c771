"""The stages of an epoch and what one slot of a stage read, from plain counters.

An epoch is read in *stages*: a stage is one stretch of reading under one world size, worker
count, batch size and shuffle buffer, ending after each rank handed ``consumed`` items to its
training loop. DataLoader's round robin says how many items each worker gave; partition, read
order and shuffle are pure functions of positions, so the rows a slot emitted, and those it left
unread, follow from those counters alone (see :mod:`duckstream.core.owed` for a whole epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from duckstream.core.interleave import Layout, interleave, stripe_rows
from duckstream.core.order import epoch_order
from duckstream.core.partition import Even, SlotSpan, rank_rows, slot_bounds, worker_rows
from duckstream.core.ranges import expand, positions_to_ranges, slice_ranges
from duckstream.core.shuffle import unread
from duckstream.core.world import World

__all__ = [
    "Stage",
    "continuation",
    "even_window",
    "first_transfer",
    "fold",
    "handed_out_whole_epoch",
    "items_per_worker",
    "least_spread_chunk",
    "next_worker",
    "read_span",
    "rows_emitted",
    "slot_unread",
    "worker_items",
]


@dataclass(frozen=True)
class Stage:
    """One stretch of an epoch read under one configuration; ``consumed`` items per rank."""

    world_size: int
    num_workers: int  # reading slots per rank: DataLoader workers, or 1 without workers
    batch_size: int  # 1 when items are rows
    drop_last: bool
    shuffle_buffer: int
    consumed: int = 0
    chunk: int = 1  # items per DataLoader transfer: the round robin serves a chunk per turn
    streams: int = 1  # pieces a shuffled read reads at once (1: one after another)
    staggered: bool = False  # first transfers staggered (see first_transfer); else all a chunk

    def same_setup(self, other: Stage) -> bool:
        """Read under the same world, workers, batching, buffer and transfers (progress aside)."""
        return replace(self, consumed=0) == replace(other, consumed=0)


def fold(done: Sequence[Stage], current: Stage) -> list[Stage]:
    """The stages after ``current``: it extends the last one when their setup is the same.

    A resume under an unchanged setup then continues the interrupted read exactly, and the
    state does not grow.
    """
    if done and done[-1].same_setup(current):
        return [*done[:-1], replace(done[-1], consumed=done[-1].consumed + current.consumed)]
    return [*done, current] if current.consumed else list(done)


def worker_items(rows: int, batch_size: int, drop_last: bool) -> int:
    """Items a worker yields from ``rows`` rows."""
    return rows // batch_size if drop_last else -(-rows // batch_size)


def first_transfer(chunk: int, workers: int, worker: int, staggered: bool = True) -> int:
    """Items in ``worker``'s first transfer of a stage: ``(worker + 1) / workers`` of a
    ``chunk`` when ``staggered``, else a chunk; every later transfer is a whole chunk (a
    worker's last may be shorter).

    DataLoader takes the workers' transfers in turn. With transfers all of a chunk, worker
    ``j``'s items would reach the loop ``j`` chunks after worker 0's items of the same place in
    their streams; workers read different parts of the storage, so in a shuffled epoch that
    lag shows as order. Staggered first transfers give every worker's items the same mean
    place in the loop (worker ``j``'s later chunks start ``(j + 1) / workers`` of a chunk into
    its stream, and its turn comes ``j`` chunks into each round).
    """
    if not staggered:
        return chunk
    return max(1, (worker + 1) * chunk // max(1, workers))


def least_spread_chunk(workers: int, items: int, most: int, last: float = 1.0) -> int:
    """The chunk, of 1 to ``most`` items, whose staggered transfers of ``workers`` workers of
    ``items`` items each (the last holding ``last`` of a whole one: a short last batch) leave
    the workers' items the least apart in the loop (see :func:`first_transfer`, :func:`_worker_spread`).

    Workers read consecutive parts of a rank's share, which hold different rows of the
    storage: where one worker's items come earlier in the loop than another's on the whole,
    that shows as storage order. Where a worker has few items, no chunk cancels it, and which
    leaves least depends on the count: 4 workers of 5 items, 2 a chunk: spread 0.22
    (|Spearman| 0.145 through the loader, 8 ranks), 4 a chunk: 0.04 (0.031); of 6 items and a
    short one, 3 a chunk: 0.12 (40 small files over 8 ranks: one rank's epoch 0.110), 4: 0.07
    (0.075).
    """
    candidates = range(1, max(1, min(most, items)) + 1)
    return min(candidates, key=lambda chunk: (_worker_spread(workers, items, chunk, last), chunk))


def _worker_spread(workers: int, items: int, chunk: int, last: float = 1.0) -> float:
    """How far apart the workers' rows lie in the loop, the workers' staggered transfers taken
    in turn: the correlation ratio of a row's place by its worker, the square root of the share
    of the places' variance that lies between the workers' mean places. It bounds the
    correlation between a row's place and anything that depends on its worker alone, such as
    the part of the storage it came from, whichever way the workers' parts lie (the linear
    correlation with the worker's number does not: 4 workers of 6 items and a short one, 3 a
    chunk: 0.01, but spread 0.12)."""
    sizes = [1.0] * (items - 1) + [last] if items else []
    left = [list(sizes) for _ in range(workers)]
    segments: list[tuple[int, float]] = []
    first = True
    while any(left):
        for worker in range(workers):
            size = first_transfer(chunk, workers, worker) if first else chunk
            segments += [(worker, rows) for rows in left[worker][:size]]
            del left[worker][:size]
        first = False
    if workers <= 1 or len(segments) <= 1:
        return 0.0
    owner = np.array([worker for worker, _ in segments])
    rows = np.array([part for _, part in segments])
    middles = np.cumsum(rows) - rows / 2
    middles -= np.dot(rows, middles) / rows.sum()
    total = float(np.dot(rows, middles**2 + rows**2 / 12))
    held = np.bincount(owner, rows, workers)
    means = np.bincount(owner, rows * middles, workers) / np.maximum(held, 1e-12)
    return float(np.sqrt(np.dot(held, means**2) / total))


def _transfer_counts(items: Sequence[int], chunk: int, staggered: bool) -> tuple[list[int], list[int]]:
    """Each worker's first transfer, and how many transfers hand out its ``items``."""
    firsts = [first_transfer(chunk, len(items), w, staggered) for w in range(len(items))]
    return firsts, [_transfers(n, f, chunk) for n, f in zip(items, firsts, strict=True)]


def _transfers(items: int, first: int, chunk: int) -> int:
    """Transfers that hand out ``items`` items, the first of ``first``, then of ``chunk``."""
    return 0 if items <= 0 else 1 + -(-max(0, items - first) // chunk)


def _after(transfers: int, first: int, chunk: int, items: int) -> int:
    """Items handed out in ``transfers`` transfers by a worker of ``items`` items."""
    return 0 if transfers <= 0 else min(items, first + (transfers - 1) * chunk)


def items_per_worker(
    consumed: int, items: Sequence[int], chunk: int = 1, staggered: bool = False
) -> list[int]:
    """How ``consumed`` items of a rank split over its workers.

    DataLoader takes one transfer from each worker in turn, skipping workers that are
    exhausted; transfers are ``chunk`` items, after a shorter first one where ``staggered``
    (:func:`first_transfer`; a worker's last may be shorter), and the training loop may stop
    inside one.
    """
    if chunk == 1:
        return _round_robin(consumed, items)
    firsts, transfers = _transfer_counts(items, chunk, staggered)

    def after(whole: int) -> list[int]:
        served = _round_robin(whole, transfers)
        return [_after(t, f, chunk, n) for t, f, n in zip(served, firsts, items, strict=True)]

    # The most whole transfers that fit in `consumed` items (items grow with transfers).
    low, high = 0, sum(transfers)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(after(middle)) <= consumed:
            low = middle
        else:
            high = middle - 1
    taken = after(low)
    rest = min(consumed, sum(items)) - sum(taken)
    if rest > 0:  # inside the next transfer
        taken[_next_in_turn(_round_robin(low, transfers), transfers)] += rest
    return taken


def _round_robin(consumed: int, items: Sequence[int]) -> list[int]:
    taken = [0] * len(items)
    left = min(consumed, sum(items))
    while left > 0:
        active = [w for w, n in enumerate(items) if taken[w] < n]
        rounds = min(left // len(active), min(items[w] - taken[w] for w in active))
        if rounds == 0:
            for w in active[:left]:
                taken[w] += 1
            break
        for w in active:
            taken[w] += rounds
        left -= rounds * len(active)
    return taken


def _next_in_turn(taken: Sequence[int], items: Sequence[int]) -> int:
    # Within a round the served workers hold one more than the rest: the next is the active
    # worker with the fewest taken, the lowest index among equals (0 when all are done).
    active = [(t, w) for w, (t, n) in enumerate(zip(taken, items, strict=True)) if t < n]
    return min(active)[1] if active else 0


def transfer_left(stage: Stage, worker: int, items_before: int) -> int:
    """Items left in the transfer ``worker`` of ``stage`` is inside after handing out
    ``items_before`` items of the stage (a whole transfer when it is between two)."""
    first = first_transfer(stage.chunk, stage.num_workers, worker, stage.staggered)
    if items_before < first:
        return first - items_before
    return stage.chunk - (items_before - first) % stage.chunk


def next_worker(consumed: int, items: Sequence[int], chunk: int = 1, staggered: bool = False) -> int:
    """The worker DataLoader's round robin serves after ``consumed`` items (0 when all are done).

    A worker the training loop left inside a transfer is the one to finish it.
    """
    taken = items_per_worker(consumed, items, chunk, staggered)
    firsts, transfers = _transfer_counts(items, chunk, staggered)
    served = [_transfers(t, f, chunk) for t, f in zip(taken, firsts, strict=True)]
    for worker, (t, n, first, count) in enumerate(zip(taken, items, firsts, served, strict=True)):
        if t < n and _after(count, first, chunk, n) != t:
            return worker
    return _next_in_turn(served, transfers)


def continuation(total: int, stage: Stage, world: World, even: Even) -> World:
    """The slot of ``stage`` that ``world``'s worker continues when a run resumes unchanged.

    A new DataLoader serves worker 0 first; the interrupted one would have served
    :func:`next_worker` next. Rotating the workers' roles by that much continues the very
    same sequence of items.
    """
    items = _rank_items(total, stage, world.rank, even)
    offset = next_worker(stage.consumed, items, stage.chunk, stage.staggered)
    return replace(world, worker=(world.worker + offset) % world.num_workers)


def rows_emitted(total: int, stage: Stage, world: World, even: Even) -> int:
    """Rows ``world``'s slot emitted during ``stage`` (its rank took ``stage.consumed`` items)
    from a sequence of ``total`` rows."""
    items = _rank_items(total, stage, world.rank, even)
    taken = items_per_worker(stage.consumed, items, stage.chunk, stage.staggered)[world.worker]
    begin, end = slot_bounds(
        total, World(world.rank, stage.world_size, world.worker, stage.num_workers), even
    )
    return min(taken * stage.batch_size, end - begin)


def handed_out_whole_epoch(total: int, stage: Stage, even: Even, worker: int | None = None) -> bool:
    """Whether ``stage``, the first stretch of an epoch of ``total`` rows, handed out every item
    of it, whichever of its ranks saved it (``worker``: ``stage.consumed`` counts that worker's
    own items)."""
    for rank in range(stage.world_size):
        items = _rank_items(total, stage, rank, even)
        if stage.consumed < (sum(items) if worker is None else items[worker]):
            return False
    return True


def _rank_items(total: int, stage: Stage, rank: int, even: Even) -> list[int]:
    """Items each worker of ``rank`` yields in ``stage`` over a sequence of ``total`` rows."""
    rows = worker_rows(rank_rows(total, stage.world_size, even, rank), stage.num_workers)
    return [worker_items(n, stage.batch_size, stage.drop_last) for n in rows]


def read_span(
    span: SlotSpan,
    *,
    layout: Layout | None,
    key: tuple[int, ...],
    seed: int,
    epoch: int,
    shuffle: bool,
    streams: int,
    buffer: int,
    workers: int = 1,
) -> tuple[SlotSpan, np.ndarray, int]:
    """A slot's span in the order it is read, the stream of each of its ranges (see
    :mod:`duckstream.core.interleave`) and the rows of its shuffle windows; unchanged (and
    windows of ``buffer`` rows) unless a shuffled read interleaves.

    Interleaved windows are of even size: a last window of a few rows would be a few
    stripes' neighbouring rows, at the end of every epoch.
    """
    if not shuffle or streams <= 1:
        return span, np.arange(len(span.ranges), dtype=np.int64), buffer
    if layout is None:
        raise ValueError("an interleaved read order needs the plan's layout")
    window = even_window(span.rows, buffer)
    order = epoch_order(len(layout.counts), seed=seed, epoch=epoch, shuffle=True)
    ranges, streams_of = interleave(
        span.ranges,
        span.real,
        layout=layout,
        order=order,
        key=key,
        streams=streams,
        stripe=stripe_rows(window, streams),
        window=window,
        mixed=workers,
    )
    return SlotSpan(ranges, span.real), streams_of, window


def even_window(rows: int, buffer: int) -> int:
    """Rows of each window when ``rows`` are cut into as few windows of at most ``buffer``."""
    windows = max(1, -(-rows // max(1, buffer)))
    return max(1, -(-rows // windows))


def slot_unread(
    span: SlotSpan,
    emitted: int,
    *,
    key: tuple[int, ...],
    seed: int,
    epoch: int,
    shuffle: bool,
    streams: int,
    buffer: int,
    layout: Layout | None,
    workers: int = 1,
) -> list[np.ndarray]:
    """The real rows of one slot's ``span`` (as partitioned, before its read order) that it did
    not emit in its first ``emitted`` rows, read with ``streams`` and windows of ``buffer``:
    disjoint ranges, rows left in a shuffle window first."""
    span, _, window_rows = read_span(
        span,
        layout=layout,
        key=key,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        streams=streams,
        buffer=buffer,
        workers=workers,
    )
    parts: list[np.ndarray] = []
    buffered, unread_from = unread(span.rows, emitted, window_rows, key, shuffle)
    # Padding repeats rows other slots own: only real rows are owed.
    buffered = buffered[buffered < span.real]
    if len(buffered):
        lo = int(buffered[0])
        window = expand(slice_ranges(span.ranges, lo, int(buffered[-1]) + 1))
        parts.append(positions_to_ranges(window[buffered - lo]))
    parts.append(slice_ranges(span.ranges, unread_from, span.real))
    return parts
