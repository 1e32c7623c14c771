"""Which rows a filter keeps, remembered per process from one epoch to the next.

A filter runs in DuckDB over each group of decoded rows, from a reader thread. DuckDB takes the
GIL back many times while it scans Arrow data from Python (a query of a millisecond took 50-80
ms beside a busy Python thread), so a read that enters a shard at each of its row groups paid
for each entry (captions, a half filter: 180 ms of DuckDB an epoch for 32 groups, against 57 ms
for the 8 whole files). The planner refuses SQL that can change from one run to the next, so
the rows a group keeps are the same every epoch: kept here as a bitmap (one bit a row), within
``KEPT_BYTES`` for the whole process, only for queries whose output is the kept rows' columns.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from duckstream.core.fork_safe import ForkSafeLock

__all__ = ["KEPT_BYTES", "forget", "kept", "remember"]

KEPT_BYTES = 32 * 1024 * 1024  # one bit a row: 268 million rows of filters remembered

_kept: dict[Hashable, tuple[int, np.ndarray]] = {}
_held = 0
_lock = ForkSafeLock()


def kept(key: Hashable) -> np.ndarray | None:
    """The positions (ascending) the filter kept of the group of rows ``key`` names, if known."""
    with _lock:
        found = _kept.get(key)
    if found is None:
        return None
    rows, bits = found
    return np.flatnonzero(np.unpackbits(bits, count=rows)).astype(np.int64)


def remember(key: Hashable, positions: np.ndarray, rows: int) -> None:
    """Keep ``positions`` of a group of ``rows`` rows while the process's budget allows."""
    global _held
    mask = np.zeros(rows, dtype=bool)
    mask[positions] = True
    bits = np.packbits(mask)
    with _lock:
        if key in _kept or _held + bits.nbytes > KEPT_BYTES:
            return
        _kept[key] = (rows, bits)
        _held += bits.nbytes


def forget() -> None:
    """Forget every group kept (their memory is the process's until then)."""
    global _held
    with _lock:
        _kept.clear()
        _held = 0
