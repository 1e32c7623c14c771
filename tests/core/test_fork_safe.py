"""A per-process cache's lock held by a thread when the process forks is free in the child."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from duckstream.core import checked_rows, kept_rows, local_footers
from duckstream.core.fork_safe import ForkSafeLock


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
@pytest.mark.parametrize("lock", [ForkSafeLock(), checked_rows._lock, kept_rows._lock, local_footers._lock])
def test_a_lock_held_at_the_fork_is_free_in_the_child(lock: ForkSafeLock) -> None:
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        child = os.fork()
        if child == 0:
            # The holder thread does not exist here: only a renewed lock can be taken.
            os._exit(0 if lock._lock.acquire(timeout=5) else 1)
        _, status = os.waitpid(child, 0)
    finally:
        release.set()
        holder.join()
    assert os.waitstatus_to_exitcode(status) == 0
