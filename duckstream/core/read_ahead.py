"""Reading ahead in a background thread, so that decoding overlaps what consumes the batches.

Parquet decoding and Arrow's copies release the GIL: while the consumer gathers shuffled
batches (or the training step runs), the thread decodes the next ones.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

__all__ = ["read_ahead"]

T = TypeVar("T")

# How often a producer blocked on a full queue looks whether the consumer has gone.
_POLL_SECONDS = 0.05


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def read_ahead(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """``items`` in order, produced by a thread that runs up to ``depth`` items ahead.

    An error raised while producing is raised here, at the item where it happened. When the
    consumer stops early, the thread stops after the item it is producing.
    """
    ready: queue.Queue[T | _End | _Failed] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: T | _End | _Failed) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
            put(_End())
        except BaseException as error:  # handed to the consumer, which raises it
            put(_Failed(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="duckstream-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
