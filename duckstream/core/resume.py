"""Which rows an epoch still owes, replayed from plain counters (no lists of row ids).

An epoch is read in *stages*: a stage is one stretch of reading under one world size, worker
count, batch size and shuffle buffer, ending after each rank handed ``consumed`` items to its
training loop. Because partition and shuffle are pure functions of positions, the rows a stage
emitted can be recomputed from those counters alone; the rows it did not emit, in position
order, are the sequence the next stage partitions anew.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from duckstream.core.interleave import Layout, interleave, stripe_rows
from duckstream.core.order import epoch_order
from duckstream.core.partition import Even, SlotSpan, partition_of, rank_rows, slot_bounds, worker_rows
from duckstream.core.ranges import as_ranges, expand, length, merge_sorted, positions_to_ranges, slice_ranges
from duckstream.core.shuffle import unread, window_key
from duckstream.core.world import World

__all__ = [
    "Owed",
    "Stage",
    "continuation",
    "even_window",
    "fold",
    "items_per_worker",
    "next_worker",
    "owed_rows",
    "read_span",
    "rows_emitted",
    "slot_span",
    "slot_spans",
    "slot_unread",
    "stage_sequence",
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


def items_per_worker(consumed: int, items: Sequence[int], chunk: int = 1) -> list[int]:
    """How ``consumed`` items of a rank split over its workers.

    DataLoader takes one transfer from each worker in turn, skipping workers that are
    exhausted; a transfer is ``chunk`` items (a worker's last one may be shorter), and the
    training loop may stop inside one.
    """
    if chunk == 1:
        return _round_robin(consumed, items)
    chunks = [-(-n // chunk) for n in items]

    def after(whole: int) -> list[int]:
        return [min(t * chunk, n) for t, n in zip(_round_robin(whole, chunks), items, strict=True)]

    # The most whole transfers that fit in `consumed` items (items grow with transfers).
    low, high = 0, sum(chunks)
    while low < high:
        middle = (low + high + 1) // 2
        if sum(after(middle)) <= consumed:
            low = middle
        else:
            high = middle - 1
    taken = after(low)
    rest = min(consumed, sum(items)) - sum(taken)
    if rest > 0:  # inside the next transfer
        taken[_next_in_turn(_round_robin(low, chunks), chunks)] += rest
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


def next_worker(consumed: int, items: Sequence[int], chunk: int = 1) -> int:
    """The worker DataLoader's round robin serves after ``consumed`` items (0 when all are done).

    A worker the training loop left inside a transfer is the one to finish it.
    """
    taken = items_per_worker(consumed, items, chunk)
    for worker, (t, n) in enumerate(zip(taken, items, strict=True)):
        if t % chunk and t < n:
            return worker
    chunks = [-(-n // chunk) for n in items]
    return _next_in_turn([-(-t // chunk) for t in taken], chunks)


def continuation(total: int, stage: Stage, world: World, even: Even) -> World:
    """The slot of ``stage`` that ``world``'s worker continues when a run resumes unchanged.

    A new DataLoader serves worker 0 first; the interrupted one would have served
    :func:`next_worker` next. Rotating the workers' roles by that much continues the very
    same sequence of items.
    """
    items = _rank_items(total, stage, world.rank, even)
    offset = next_worker(stage.consumed, items, stage.chunk)
    return replace(world, worker=(world.worker + offset) % world.num_workers)


def rows_emitted(total: int, stage: Stage, world: World, even: Even) -> int:
    """Rows ``world``'s slot emitted during ``stage`` (its rank took ``stage.consumed`` items)
    from a sequence of ``total`` rows."""
    items = _rank_items(total, stage, world.rank, even)
    taken = items_per_worker(stage.consumed, items, stage.chunk)[world.worker]
    begin, end = slot_bounds(
        total, World(world.rank, stage.world_size, world.worker, stage.num_workers), even
    )
    return min(taken * stage.batch_size, end - begin)


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
    )
    return SlotSpan(ranges, span.real), streams_of, window


def even_window(rows: int, buffer: int) -> int:
    """Rows of each window when ``rows`` are cut into as few windows of at most ``buffer``."""
    windows = max(1, -(-rows // max(1, buffer)))
    return max(1, -(-rows // windows))


@dataclass(frozen=True)
class _Slots:
    """One stage's slots, in slot order (which is position order), over ``total`` owed rows."""

    total: int
    begin: np.ndarray  # where each slot's span begins in the sequence
    rows: np.ndarray  # rows of each span, padding included
    real: np.ndarray  # its rows that are not padding
    emitted: np.ndarray  # rows it emitted (:func:`rows_emitted`)
    owed: np.ndarray  # real rows it left unread, cumulated: slot s owes owed[s] to owed[s + 1]


def _stage_slots(
    total: int, stage: Stage, index: int, *, seed: int, epoch: int, shuffle: bool, even: Even
) -> _Slots:
    """Every slot of ``stage`` counted at once: what each read, emitted and left owed."""
    world_size, workers = stage.world_size, stage.num_workers
    ranks = np.arange(world_size, dtype=np.int64)
    if even == "split":
        base, extra = divmod(total, world_size)
        rank_n = base + (ranks < extra)
        rank_begin = base * ranks + np.minimum(ranks, extra)
    else:
        rank_n = np.full(world_size, rank_rows(total, world_size, even), dtype=np.int64)
        rank_begin = rank_n * ranks
    worker = np.arange(workers, dtype=np.int64)
    base_w, extra_w = (rank_n // workers)[:, None], (rank_n % workers)[:, None]
    rows = base_w + (worker < extra_w)
    begin = rank_begin[:, None] + base_w * worker + np.minimum(worker, extra_w)
    real = np.clip(np.minimum(begin + rows, total) - begin, 0, None)
    taken_of: dict[tuple[int, ...], list[int]] = {}
    taken = np.empty_like(rows)
    for rank in range(world_size):
        items = tuple(worker_items(int(n), stage.batch_size, stage.drop_last) for n in rows[rank])
        if items not in taken_of:
            taken_of[items] = items_per_worker(stage.consumed, items, stage.chunk)
        taken[rank] = taken_of[items]
    emitted = np.minimum(taken * stage.batch_size, rows)
    # What :func:`duckstream.core.shuffle.unread` leaves, counted: the rest of the window the
    # slot stopped in, and the rows after it, real rows only.
    if shuffle and stage.streams > 1:
        windows = np.maximum(1, -(-rows // max(1, stage.shuffle_buffer)))
        window = np.maximum(1, -(-rows // windows))
    else:
        window = np.full_like(rows, stage.shuffle_buffer)
    start = emitted // window * window
    inside = emitted - start
    size = np.minimum(window, rows - start)
    buffered = (inside > 0) & (size > 0)
    unread_from = np.where(buffered, start + size, start)
    counts = np.where(buffered, size - inside, 0) + np.maximum(0, real - unread_from)
    # A window reaching into padding: which of its unread rows are real depends on its order.
    for rank, slot_worker in zip(*np.nonzero(buffered & (start + size > real)), strict=True):
        world = World(int(rank), world_size, int(slot_worker), workers)
        key = window_key(seed, epoch, index, world)
        left, _ = unread(
            int(rows[rank, slot_worker]),
            int(emitted[rank, slot_worker]),
            int(window[rank, slot_worker]),
            key,
            shuffle,
        )
        counts[rank, slot_worker] = int((left < real[rank, slot_worker]).sum()) + max(
            0, int(real[rank, slot_worker] - unread_from[rank, slot_worker])
        )
    owed = np.concatenate([[0], np.cumsum(counts.reshape(-1))]).astype(np.int64)
    return _Slots(total, begin.reshape(-1), rows.reshape(-1), real.reshape(-1), emitted.reshape(-1), owed)


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
) -> list[np.ndarray]:
    """The real rows of one slot's ``span`` (as partitioned, before its read order) that it did
    not emit in its first ``emitted`` rows, read with ``streams`` and windows of ``buffer``:
    disjoint ranges, rows left in a shuffle window first."""
    span, _, window_rows = read_span(
        span, layout=layout, key=key, seed=seed, epoch=epoch, shuffle=shuffle, streams=streams, buffer=buffer
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


def _needs_layout(stage: Stage, *, shuffle: bool, layout: Layout | None) -> None:
    # Raised before any slot is replayed, as :func:`read_span` would for the first one.
    if shuffle and stage.streams > 1 and layout is None:
        raise ValueError("an interleaved read order needs the plan's layout")


def _items_of(sequence: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``slice_ranges`` over one ``sequence``, its running sums computed once."""
    sizes = sequence[:, 1] - sequence[:, 0]
    ends = np.cumsum(sizes)
    begins = ends - sizes

    def items(lo: int, hi: int) -> np.ndarray:
        if hi <= lo or len(sequence) == 0:
            return sequence[:0]
        first, last = int(np.searchsorted(ends, lo, side="right")), int(np.searchsorted(begins, hi))
        picked: np.ndarray = sequence[first:last].copy()
        offsets = begins[first:last]
        picked[:, 0] += np.maximum(lo - offsets, 0)
        picked[:, 1] -= np.maximum(offsets + sizes[first:last] - hi, 0)
        return picked

    return items


def _unread_after(
    sequence: np.ndarray,
    stage: Stage,
    index: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    layout: Layout | None,
) -> np.ndarray:
    _needs_layout(stage, shuffle=shuffle, layout=layout)
    total = length(sequence)
    slots = _stage_slots(total, stage, index, seed=seed, epoch=epoch, shuffle=shuffle, even=even)
    items = _items_of(sequence)
    parts: list[np.ndarray] = []
    for slot in np.flatnonzero(np.diff(slots.owed)).tolist():
        world = World(
            slot // stage.num_workers, stage.world_size, slot % stage.num_workers, stage.num_workers
        )
        if slots.emitted[slot] == 0:  # owes its real rows, in position order
            begin = int(slots.begin[slot])
            parts.append(items(begin, begin + int(slots.real[slot])))
            continue
        parts.extend(
            slot_unread(
                partition_of(total, items, world, even),
                int(slots.emitted[slot]),
                key=window_key(seed, epoch, index, world),
                seed=seed,
                epoch=epoch,
                shuffle=shuffle,
                streams=stage.streams,
                buffer=stage.shuffle_buffer,
                layout=layout,
            )
        )
    return merge_sorted(parts)


def stage_sequence(
    total_rows: int,
    stages: Sequence[Stage],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    layout: Layout | None = None,
) -> np.ndarray:
    """The positions still owed after ``stages``, in position order (all of them for none).

    ``layout`` (the plan's) is needed where a stage read shuffled pieces side by side.
    """
    sequence = as_ranges([(0, total_rows)])
    for index, stage in enumerate(stages):
        sequence = _unread_after(
            sequence, stage, index, seed=seed, epoch=epoch, shuffle=shuffle, even=even, layout=layout
        )
    return sequence


def slot_span(
    total_rows: int,
    stages: Sequence[Stage],
    world: World,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    layout: Layout | None = None,
) -> SlotSpan:
    """``partition(stage_sequence(total_rows, stages, ...), world, even)``, computed from the
    stages' counters and the few slots of earlier stages whose owed rows the span holds: no
    other slot's rows are listed, so one slot's share of a large world costs little."""
    return slot_spans(
        total_rows, stages, [world], seed=seed, epoch=epoch, shuffle=shuffle, even=even, layout=layout
    )[0]


def slot_spans(
    total_rows: int,
    stages: Sequence[Stage],
    worlds: Sequence[World],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    layout: Layout | None = None,
) -> list[SlotSpan]:
    """:func:`slot_span` of each of ``worlds`` (a rank's workers, say), sharing the work."""
    owed = Owed(total_rows, stages, seed=seed, epoch=epoch, shuffle=shuffle, even=even, layout=layout)
    return [owed.span(world) for world in worlds]


def owed_rows(
    total_rows: int, stages: Sequence[Stage], *, seed: int, epoch: int, shuffle: bool, even: Even
) -> int:
    """How many positions :func:`stage_sequence` holds, counted without listing them."""
    total = total_rows
    for index, stage in enumerate(stages):
        total = int(
            _stage_slots(total, stage, index, seed=seed, epoch=epoch, shuffle=shuffle, even=even).owed[-1]
        )
    return total


class Owed:
    """The sequences owed after each stage, known by their slots' counts; items asked for are
    recomputed from the slots that owe them (each slot once)."""

    def __init__(
        self,
        total_rows: int,
        stages: Sequence[Stage],
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
        even: Even,
        layout: Layout | None,
    ) -> None:
        self._stages = tuple(stages)
        self._seed, self._epoch, self._shuffle, self._even, self._layout = seed, epoch, shuffle, even, layout
        self._slots: list[_Slots] = []
        self._lengths = [total_rows]
        for index, stage in enumerate(self._stages):
            _needs_layout(stage, shuffle=shuffle, layout=layout)
            slots = _stage_slots(
                self._lengths[-1], stage, index, seed=seed, epoch=epoch, shuffle=shuffle, even=even
            )
            self._slots.append(slots)
            self._lengths.append(int(slots.owed[-1]))
        self._owed_by_slot: dict[tuple[int, int], np.ndarray] = {}

    @property
    def rows(self) -> int:
        """Rows owed after the last stage."""
        return self._lengths[-1]

    def span(self, world: World) -> SlotSpan:
        """``world``'s share of the rows owed after the last stage (see :func:`slot_span`)."""
        stage = len(self._stages)
        return partition_of(self._lengths[stage], lambda lo, hi: self.items(stage, lo, hi), world, self._even)

    def items(self, stage: int, lo: int, hi: int) -> np.ndarray:
        """Items ``lo`` to ``hi`` of the sequence owed after ``stage`` stages, as ranges."""
        lo, hi = max(lo, 0), min(hi, self._lengths[stage])
        if hi <= lo:
            return np.empty((0, 2), dtype=np.int64)
        if stage == 0:
            return np.array([[lo, hi]], dtype=np.int64)
        owed = self._slots[stage - 1].owed
        first, last = int(np.searchsorted(owed, lo, side="right")) - 1, int(np.searchsorted(owed, hi))
        parts = []
        for slot in range(first, last):
            start, stop = int(owed[slot]), int(owed[slot + 1])
            if stop > start:
                ranges = self._slot_owed(stage - 1, slot)
                parts.append(slice_ranges(ranges, max(lo, start) - start, min(hi, stop) - start))
        return _joined(np.concatenate(parts))

    def _slot_owed(self, index: int, slot: int) -> np.ndarray:
        """What slot ``slot`` of stage ``index`` left owed, in position order."""
        if (index, slot) not in self._owed_by_slot:
            stage, slots = self._stages[index], self._slots[index]
            begin = int(slots.begin[slot])
            if slots.emitted[slot] == 0:
                found = self.items(index, begin, begin + int(slots.real[slot]))
            else:
                world = World(
                    slot // stage.num_workers, stage.world_size, slot % stage.num_workers, stage.num_workers
                )
                span = partition_of(slots.total, lambda lo, hi: self.items(index, lo, hi), world, self._even)
                parts = slot_unread(
                    span,
                    int(slots.emitted[slot]),
                    key=window_key(self._seed, self._epoch, index, world),
                    seed=self._seed,
                    epoch=self._epoch,
                    shuffle=self._shuffle,
                    streams=stage.streams,
                    buffer=stage.shuffle_buffer,
                    layout=self._layout,
                )
                found = _joined(np.concatenate(parts))
            self._owed_by_slot[(index, slot)] = found
        return self._owed_by_slot[(index, slot)]


def _joined(ranges: np.ndarray) -> np.ndarray:
    """Disjoint ranges sorted by position, those that touch joined (as :func:`merge_sorted`)."""
    ranges = ranges[ranges[:, 1] > ranges[:, 0]]
    if len(ranges) == 0:
        return np.empty((0, 2), dtype=np.int64)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    starts = np.flatnonzero(np.concatenate([[True], ranges[1:, 0] != ranges[:-1, 1]]))
    stops = np.concatenate([starts[1:], [len(ranges)]]) - 1
    return np.stack([ranges[starts, 0], ranges[stops, 1]], axis=1).astype(np.int64)
