"""Decoded rows already checked, remembered per process.

pyarrow does not check what it decodes, so each decoded batch is validated (every string's
UTF-8), which is a tenth of a shuffled epoch's CPU for captions. A damaged page decodes the
same way every time, so rows checked once need no second check: this keeps, per file of a plan
and the columns read, the row ranges checked so far (a few merged ranges a file).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable

from duckstream.core.fork_safe import ForkSafeLock

__all__ = ["checked", "forget", "remember"]

_ranges: dict[Hashable, list[tuple[int, int]]] = {}  # sorted, disjoint, not touching
_lock = ForkSafeLock()


def checked(key: Hashable, first: int, stop: int) -> bool:
    """Whether rows ``first..stop`` of what ``key`` names were all checked."""
    with _lock:
        ranges = _ranges.get(key, ())
        at = bisect.bisect_right(ranges, first, key=_start) - 1
        return at >= 0 and ranges[at][0] <= first and stop <= ranges[at][1]


def remember(key: Hashable, first: int, stop: int) -> None:
    """Rows ``first..stop`` of what ``key`` names are checked."""
    if stop <= first:
        return
    with _lock:
        ranges = _ranges.setdefault(key, [])
        # The ranges that touch first..stop merge with it.
        lo = bisect.bisect_left(ranges, first, key=_start)
        if lo > 0 and ranges[lo - 1][1] >= first:
            lo -= 1
        hi = lo
        while hi < len(ranges) and ranges[hi][0] <= stop:
            hi += 1
        if hi > lo:
            first, stop = min(first, ranges[lo][0]), max(stop, ranges[hi - 1][1])
        ranges[lo:hi] = [(first, stop)]


def _start(found: tuple[int, int]) -> int:
    return found[0]


def forget() -> None:
    """Forget every range checked."""
    with _lock:
        _ranges.clear()
