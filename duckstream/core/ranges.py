"""Sequences of epoch positions as run-length ranges: ``(k, 2)`` arrays of ``[start, stop)``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["as_ranges", "expand", "length", "merge_sorted", "positions_to_ranges", "slice_ranges"]


def as_ranges(pairs: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """``pairs`` as an int64 ``(k, 2)`` array, dropping empty ranges."""
    array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return array[array[:, 1] > array[:, 0]]


def length(ranges: np.ndarray) -> int:
    """How many positions the sequence holds."""
    return int((ranges[:, 1] - ranges[:, 0]).sum())


def slice_ranges(ranges: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Items ``lo`` to ``hi`` (exclusive) of the sequence, as ranges, in sequence order."""
    if hi <= lo or len(ranges) == 0:
        return ranges[:0]
    sizes = ranges[:, 1] - ranges[:, 0]
    ends = np.cumsum(sizes)
    begins = ends - sizes
    keep = (ends > lo) & (begins < hi)
    picked: np.ndarray = ranges[keep].copy()
    offsets = begins[keep]
    picked[:, 0] += np.maximum(lo - offsets, 0)
    picked[:, 1] -= np.maximum(offsets + sizes[keep] - hi, 0)
    return picked


def expand(ranges: np.ndarray) -> np.ndarray:
    """Every position of the sequence, in order (for window-sized sequences only)."""
    if len(ranges) == 0:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in ranges])


def positions_to_ranges(positions: np.ndarray) -> np.ndarray:
    """Sorted, distinct positions as the fewest ranges."""
    if len(positions) == 0:
        return np.empty((0, 2), dtype=np.int64)
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = positions[np.concatenate(([0], breaks))]
    stops = positions[np.concatenate((breaks - 1, [len(positions) - 1]))] + 1
    return np.stack([starts, stops], axis=1).astype(np.int64)


def merge_sorted(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The union of disjoint range sets, sorted by position, adjacent ranges joined."""
    nonempty = [p for p in parts if len(p)]
    if not nonempty:
        return np.empty((0, 2), dtype=np.int64)
    stacked = np.concatenate(nonempty)
    stacked = stacked[np.argsort(stacked[:, 0], kind="stable")]
    merged = [stacked[0].copy()]
    for start, stop in stacked[1:]:
        if start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append(np.array([start, stop], dtype=np.int64))
    return np.stack(merged)
