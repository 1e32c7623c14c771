"""Reading ahead in background threads, so that decoding overlaps what consumes the batches.

Parquet decoding and Arrow's copies release the GIL: while the consumer gathers shuffled
batches (or the training step runs), threads decode the next ones, in order.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["Producer", "read_ahead_each"]

T = TypeVar("T")

# How often a producer blocked on a full queue looks whether the consumer has gone.
_POLL_SECONDS = 0.05
THREAD_NAME = "duckstream-read-ahead"


class _End:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class Producer(Generic[T]):
    """A thread, started at once, that puts ``items`` into a queue of ``depth``; iterating
    the producer takes them out, in order."""

    def __init__(self, items: Iterable[T], depth: int) -> None:
        self._ready: queue.Queue[T | _End | _Failed] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._produce, args=(items,), name=THREAD_NAME, daemon=True)
        self._thread.start()

    def _put(self, item: T | _End | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, items: Iterable[T]) -> None:
        source = iter(items)
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_End())
        except BaseException as error:  # handed to the consumer, which raises it
            self._put(_Failed(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        item = self._ready.get()
        if isinstance(item, _End | _Failed):
            self._ended = True
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def stop(self) -> None:
        """Stop after the item being produced (if any) and wait for the thread."""
        self._stop.set()
        self._thread.join()


def read_ahead_each(
    sources: Iterable[Callable[[int], Iterable[T]]], *, lanes: int, depth: int
) -> Generator[T, None, None]:
    """The items of each source in turn, each source produced by a thread of its own.

    Up to ``lanes`` sources run at once, each up to ``depth`` items ahead of the consumer. A
    source is called with its lane (``0 .. lanes - 1``): no two sources that run at the same
    time share a lane, so each lane can have a reader of its own. An error raised while
    producing is raised here, at the item where it happened. When the consumer stops early,
    every thread stops after the item it is producing.
    """
    pending = iter(sources)
    lane_of_next = itertools.cycle(range(max(1, lanes)))
    running: deque[Producer[T]] = deque()

    def start_next() -> None:
        source = next(pending, None)
        if source is not None:
            running.append(Producer(source(next(lane_of_next)), depth))

    try:
        for _ in range(max(1, lanes)):
            start_next()
        while running:
            yield from running[0]
            # Sources end in the order they started: the lane just freed is the next in turn.
            running.popleft().stop()
            start_next()
    finally:
        for producer in running:
            producer.stop()
