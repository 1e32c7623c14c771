"""Object-store Parquet files opened once per process, not once per read.

Opening a file on S3 costs a HEAD request (its size) and a footer read before the first data
byte: two round trips, about 40 ms against a store 20 ms away, paid by every reader of every
shard in every epoch. Planning reads every footer already; here they are kept (a forked
worker inherits them), and the opened handles are kept per process, so a later read of the
same file goes straight to its data pages. Files of a planned stream are taken as immutable,
as lake data files are: one rewritten in place since planning reads as damaged.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

import pyarrow.parquet as pq

__all__ = ["footer", "forget", "open_remote", "remember_footer"]

# Footers are a few KiB each; handles hold no connection, only the object's size.
_MAX_FOOTERS = 8_192
_MAX_HANDLES = 1_024

_lock = threading.Lock()
_footers: OrderedDict[str, pq.FileMetaData] = OrderedDict()
# (process id, path) -> handle: an S3 client must not cross a fork.
_handles: OrderedDict[tuple[int, str], Any] = OrderedDict()


def remember_footer(path: str, metadata: pq.FileMetaData) -> None:
    """Keep the footer read for ``path`` (a remote file) for readers in this process."""
    with _lock:
        _footers[path] = metadata
        _footers.move_to_end(path)
        while len(_footers) > _MAX_FOOTERS:
            _footers.popitem(last=False)


def footer(path: str) -> pq.FileMetaData | None:
    """The footer kept for ``path``, if any."""
    with _lock:
        return _footers.get(path)


def open_remote(path: str, filesystem: Any) -> Any:
    """A random-access handle on ``path`` (``scheme://bucket/key``), opened once per process.

    Readers share it: Parquet reads at explicit offsets, which is safe from several threads.
    """
    key = (os.getpid(), path)
    with _lock:
        handle = _handles.get(key)
        if handle is not None:
            _handles.move_to_end(key)
            return handle
    handle = filesystem.open_input_file(path.split("://", 1)[1])
    with _lock:
        _handles[key] = handle
        while len(_handles) > _MAX_HANDLES:
            _handles.popitem(last=False)
    return handle


def forget(path: str) -> None:
    """Drop this process's handle on ``path`` (it failed): the next read opens it anew."""
    with _lock:
        _handles.pop((os.getpid(), path), None)
