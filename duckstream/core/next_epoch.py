"""The next epoch's read, begun while the training loop takes the last windows of this one.

A shuffled epoch's first batch waits for its whole first window: a stripe of each of 16
pieces, each piece's first pages (and dictionaries) decoded, with the loop idle. While the
last window of an epoch goes out, the read threads are idle instead. So when the loader knows
which epoch it reads next, that read starts then, up to its first batch, in a thread of its
own; the next pass takes it if it asks for exactly that read, and it is dropped otherwise.
The read is the very one the next pass would open: what it yields is unchanged.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Generator, Hashable, Iterator
from typing import Any

import pyarrow as pa

from duckstream.core.read_ahead import THREAD_NAME

__all__ = ["StartedRead"]


class StartedRead:
    """``batches`` (a read known by ``key``), advanced to its first batch in a thread of its
    own; ``start`` is whatever the opener needs back with it. The read is dropped when
    ``owner`` is collected, or the process ends, before it is taken."""

    def __init__(
        self, key: Hashable, start: Any, batches: Iterator[pa.RecordBatch], *, owner: object
    ) -> None:
        self.key = key
        self.start = start
        self._batches = batches
        self._first: list[pa.RecordBatch] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._dropped = False
        self._taken = False
        # Threads do not cross a fork: a forked worker must leave this read alone.
        self._pid = os.getpid()
        # At exit too: a thread still inside DuckDB or pyarrow when the interpreter stops its
        # threads aborts the process, so the read is waited for and closed first.
        self._finalizer = weakref.finalize(owner, self.drop, wait=True)
        self._thread = threading.Thread(target=self._begin, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _begin(self) -> None:
        try:
            self._first.append(next(self._batches))
        except StopIteration:
            pass
        except BaseException as error:  # raised where the pass takes the read
            self._error = error
        with self._lock:
            self._ready.set()
            dropped = self._dropped
        if dropped:
            self._close()

    @property
    def usable(self) -> bool:
        """Whether this process may take (or drop) the read."""
        return self._pid == os.getpid() and not self._taken

    def take(self) -> Generator[pa.RecordBatch, None, None]:
        """The read's batches, from its first (which it waits for)."""
        self._taken = True
        self._finalizer.detach()
        return self._batches_from_first()

    def _batches_from_first(self) -> Generator[pa.RecordBatch, None, None]:
        self._ready.wait()
        if self._error is not None:
            raise self._error
        yield from self._first
        self._first = []
        yield from self._batches

    def drop(self, *, wait: bool = False) -> None:
        """Stop the read: at once if its first batch is in, else as soon as it is (``wait``:
        return only then)."""
        if os.getpid() != self._pid:
            return  # a forked copy: its lock may have been held at the fork, its thread is gone
        self._finalizer.detach()
        with self._lock:
            self._dropped = True
            ready = self._ready.is_set()
        if ready:
            self._close()
        elif wait:
            self._thread.join()  # the thread closes the read

    def _close(self) -> None:
        self._first = []
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()
