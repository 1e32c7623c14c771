"""Footers of local Parquet files, parsed once per process instead of once per read.

A shuffled read opens each row group of an epoch on its own (16 at a time), so one file is
opened several times an epoch, every epoch: opening and parsing its footer each time took
about 8% of the read threads' time on a narrow epoch. A footer is kept with the file's size
and modification time, and used only while both are unchanged: a file rewritten in place is
read afresh.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import pyarrow.parquet as pq

from duckstream.core.fork_safe import ForkSafeLock

__all__ = ["footer", "identity", "remember"]

_MAX_FOOTERS = 8_192

_lock = ForkSafeLock()
_footers: OrderedDict[str, tuple[tuple[int, int], pq.FileMetaData]] = OrderedDict()


def identity(path: str) -> tuple[int, int] | None:
    """The file's size and modification time (None if it cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None  # opening it reports what is wrong
    return stat.st_size, stat.st_mtime_ns


def footer(path: str) -> pq.FileMetaData | None:
    """The footer kept for ``path``, if the file is unchanged since it was kept."""
    with _lock:
        kept = _footers.get(path)
    if kept is None or kept[0] != identity(path):
        return None
    return kept[1]


def remember(path: str, metadata: pq.FileMetaData) -> None:
    """Keep ``path``'s footer, as the file is now."""
    now = identity(path)
    if now is None:
        return
    with _lock:
        _footers[path] = (now, metadata)
        _footers.move_to_end(path)
        while len(_footers) > _MAX_FOOTERS:
            _footers.popitem(last=False)
