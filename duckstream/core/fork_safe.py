"""A lock for a per-process cache that a forked child can always take.

A DataLoader worker is forked while the parent's reader threads may hold such a lock; the
child has no such thread, so a lock copied while held would stay held in it for good.
"""

from __future__ import annotations

import os
import threading
import weakref
from types import TracebackType

__all__ = ["ForkSafeLock"]

_made: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkSafeLock:
    """A ``threading.Lock`` (as a context manager) made anew in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _made.add(self)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._lock.release()

    def _renew(self) -> None:
        self._lock = threading.Lock()


def _renew_all() -> None:
    for lock in list(_made):
        lock._renew()


os.register_at_fork(after_in_child=_renew_all)
