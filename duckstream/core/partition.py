"""Partition: a sequence of rows cut into equal per-rank spans, then per-worker spans.

Every row lands in exactly one slot; every rank gets the same number of rows, padded by
repeating rows from the start of the sequence (``even="pad"``, as DistributedSampler does) or
cut short (``even="drop"``). Within a rank, workers' spans differ by at most one row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from duckstream.core.ranges import length, slice_ranges
from duckstream.core.world import World

__all__ = ["Even", "SlotSpan", "partition", "partition_of", "rank_rows", "slot_bounds", "worker_rows"]

# "split" (used by the Hugging Face adapter) shares rows exactly, ranks differing by one row.
Even = Literal["pad", "drop", "split"]


@dataclass(frozen=True)
class SlotSpan:
    """One slot's rows: ``ranges`` of positions in read order, the first ``real`` not padding."""

    ranges: np.ndarray
    real: int

    @property
    def rows(self) -> int:
        return length(self.ranges)


def rank_rows(total: int, world_size: int, even: Even, rank: int = 0) -> int:
    """Rows rank ``rank`` reads when ``total`` rows are shared by ``world_size`` ranks."""
    if even == "pad":
        return -(-total // world_size)
    if even == "split":
        base, extra = divmod(total, world_size)
        return base + (1 if rank < extra else 0)
    return total // world_size


def worker_rows(rows: int, num_workers: int) -> list[int]:
    """How a rank's ``rows`` split over its workers: sizes that differ by at most one."""
    base, extra = divmod(rows, num_workers)
    return [base + (1 if w < extra else 0) for w in range(num_workers)]


def slot_bounds(total: int, world: World, even: Even) -> tuple[int, int]:
    """Where ``world``'s slot begins and ends among ``total`` rows (past ``total``: padding)."""
    rows = rank_rows(total, world.world_size, even, world.rank)
    if even == "split":
        base, extra = divmod(total, world.world_size)
        rank_begin = base * world.rank + min(world.rank, extra)
    else:
        rank_begin = rows * world.rank
    base, extra = divmod(rows, world.num_workers)
    begin = rank_begin + base * world.worker + min(world.worker, extra)
    return begin, begin + base + (1 if world.worker < extra else 0)


def partition(sequence: np.ndarray, world: World, even: Even) -> SlotSpan:
    """The span of ``sequence`` (ranges, in order) that ``world``'s slot reads."""
    return partition_of(length(sequence), lambda lo, hi: slice_ranges(sequence, lo, hi), world, even)


def partition_of(total: int, items: Callable[[int, int], np.ndarray], world: World, even: Even) -> SlotSpan:
    """:func:`partition` of a sequence of ``total`` rows known only by ``items(lo, hi)``, its
    items ``lo`` to ``hi`` as ranges: only the slot's own are asked for."""
    begin, end = slot_bounds(total, world, even)
    real_end = min(end, total)
    parts = [items(begin, real_end)]
    # Padding: indices past the end wrap around to the start of the sequence.
    pad_from, pad_count = max(begin, total) - total, end - max(begin, total)
    while pad_count > 0 and total > 0:
        start = pad_from % total
        take = min(pad_count, total - start)
        parts.append(items(start, start + take))
        pad_from += take
        pad_count -= take
    return SlotSpan(np.concatenate(parts), max(0, real_end - begin))
