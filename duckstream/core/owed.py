"""Which rows an epoch still owes after its stages, replayed from plain counters (no lists of
row ids).

The rows a stage did not emit, in position order, are the sequence the next stage partitions
anew. Every slot of a stage is counted at once (:func:`owed_rows`); the rows themselves are
listed only for the slots a share asks for (:class:`Owed`), so one slot's share of a large
world costs little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from duckstream.core.interleave import Layouts, layout_of
from duckstream.core.partition import Even, SlotSpan, partition_of, rank_rows
from duckstream.core.ranges import as_ranges, slice_ranges
from duckstream.core.resume import Stage, items_per_worker, slot_unread, worker_items
from duckstream.core.shuffle import unread, window_key
from duckstream.core.world import World

__all__ = ["Owed", "owed_rows", "slot_span", "slot_spans", "stage_sequence"]


@dataclass(frozen=True)
class _Slots:
    """One stage's slots, in slot order (which is position order), over ``total`` owed rows."""

    total: int
    begin: np.ndarray  # where each slot's span begins in the sequence
    rows: np.ndarray  # rows of each span, padding included
    real: np.ndarray  # its rows that are not padding
    emitted: np.ndarray  # rows it emitted (:func:`duckstream.core.resume.rows_emitted`)
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
            taken_of[items] = items_per_worker(stage.consumed, items, stage.chunk, stage.staggered)
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


def _needs_layout(stage: Stage, *, shuffle: bool, layout: Layouts | None) -> None:
    # Raised before any slot is replayed, as :func:`read_span` would for the first one.
    if shuffle and stage.streams > 1 and layout is None:
        raise ValueError("an interleaved read order needs the plan's layout")


def stage_sequence(
    total_rows: int,
    stages: Sequence[Stage],
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    layout: Layouts | None = None,
) -> np.ndarray:
    """The positions still owed after ``stages``, in position order (all of them for none).

    ``layout`` (the plan's, or its layout for a world size: ``plan.layout_for``) is needed
    where a stage read shuffled pieces side by side.
    """
    if not stages:
        return as_ranges([(0, total_rows)])
    owed = Owed(total_rows, stages, seed=seed, epoch=epoch, shuffle=shuffle, even=even, layout=layout)
    return owed.items(len(stages), 0, owed.rows)


def slot_span(
    total_rows: int,
    stages: Sequence[Stage],
    world: World,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    layout: Layouts | None = None,
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
    layout: Layouts | None = None,
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
        layout: Layouts | None,
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
                    layout=layout_of(self._layout, stage.world_size),
                    workers=stage.num_workers,
                )
                found = _joined(np.concatenate(parts))
            self._owed_by_slot[(index, slot)] = found
        return self._owed_by_slot[(index, slot)]


def _joined(ranges: np.ndarray) -> np.ndarray:
    """Disjoint ranges sorted by position, those that touch joined."""
    ranges = ranges[ranges[:, 1] > ranges[:, 0]]
    if len(ranges) == 0:
        return np.empty((0, 2), dtype=np.int64)
    ranges = ranges[np.argsort(ranges[:, 0], kind="stable")]
    starts = np.flatnonzero(np.concatenate([[True], ranges[1:, 0] != ranges[:-1, 1]]))
    stops = np.concatenate([starts[1:], [len(ranges)]]) - 1
    return np.stack([ranges[starts, 0], ranges[stops, 1]], axis=1).astype(np.int64)
