"""Loader statistics: rows, batches, rows/s and the time a training loop waited for data."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

__all__ = ["EpochStats", "LoaderMeter", "count_rows"]

T = TypeVar("T")


@dataclass(frozen=True)
class EpochStats:
    """One pass over a loader, as the consumer saw it.

    ``seconds`` runs from the first request for an item to the hand-over of the last one;
    ``wait_seconds`` is the part of it the consumer spent blocked in ``next()``; ``sources``
    (a mix's passes only) the items each mixed source gave in the epoch, all ranks together.
    """

    epoch: int
    rows: int
    batches: int
    seconds: float
    wait_seconds: float
    sources: Mapping[str, int] | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_fraction(self) -> float:
        """Share of the pass spent waiting for data: near 0 the loader keeps up, near 1 it does not."""
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON (the catalog) and metric loggers."""
        found: dict[str, Any] = {
            "epoch": self.epoch,
            "rows": self.rows,
            "batches": self.batches,
            "seconds": round(self.seconds, 6),
            "wait_seconds": round(self.wait_seconds, 6),
            "rows_per_second": round(self.rows_per_second, 3),
            "wait_fraction": round(self.wait_fraction, 6),
        }
        if self.sources is not None:
            found["sources"] = dict(self.sources)
        return found


def count_rows(item: Any) -> int:
    """Rows in one loader item: a record batch, a dict of columns, a tuple of tensors, a tensor."""
    num_rows = getattr(item, "num_rows", None)
    if isinstance(num_rows, int):  # pa.RecordBatch / pa.Table
        return num_rows
    if isinstance(item, Mapping):
        return count_rows(next(iter(item.values()))) if item else 0
    if isinstance(item, tuple) and item:
        return count_rows(item[0])
    shape = getattr(item, "shape", None)  # torch tensors and numpy arrays
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    if isinstance(item, list):
        return len(item)
    return 1


class LoaderMeter:
    """Measures passes over a loader; one :class:`EpochStats` per pass.

    ``rows_of`` counts the rows of one item (by default :func:`count_rows`; a loader of single
    rows passes ``lambda item: 1``). :meth:`current` reads a pass while it runs, so a training
    loop that stops early (a batch limit) still reports what it took.
    """

    def __init__(self, rows_of: Callable[[Any], int] = count_rows) -> None:
        self._rows_of = rows_of
        self._finished: list[EpochStats] = []
        self._running: EpochStats | None = None
        self._pass = 0  # which pass owns _running; an abandoned pass must not end a newer one
        self._sources: Callable[[], Mapping[str, int] | None] | None = None

    @property
    def epochs(self) -> list[EpochStats]:
        """Finished passes, oldest first."""
        return list(self._finished)

    def current(self) -> EpochStats | None:
        """The pass in progress, else the last finished one, else None."""
        if self._running is not None:
            return self._with_sources(self._running)
        return self._finished[-1] if self._finished else None

    def _with_sources(self, stats: EpochStats) -> EpochStats:
        found = None if self._sources is None else self._sources()
        return stats if found is None else replace(stats, sources=dict(found))

    def measure(
        self,
        items: Iterable[T],
        epoch: int | Callable[[], int],
        *,
        sources: Callable[[], Mapping[str, int] | None] | None = None,
    ) -> Generator[T, None, None]:
        """Yield ``items`` unchanged, timing each ``next()``, as the pass of ``epoch``.

        ``epoch`` may be a function, asked after the first item (when a loader that picks its
        epoch as it starts has done so). ``sources``, when given, counts the items each mixed
        source gave; it is asked when the pass is read or ends, not per item.
        """
        self._end_pass()  # a pass the consumer abandoned without closing it
        self._sources = sources
        self._pass += 1
        this_pass = self._pass
        iterator = iter(items)
        clock = time.perf_counter
        start = clock()
        rows = batches = 0
        waited = 0.0
        number = epoch if isinstance(epoch, int) else -1
        self._running = EpochStats(number, 0, 0, 0.0, 0.0)
        try:
            while True:
                asked = clock()
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                handed = clock()
                if not batches and not isinstance(epoch, int):
                    number = epoch()
                waited += handed - asked
                rows += self._rows_of(item)
                batches += 1
                self._running = EpochStats(number, rows, batches, handed - start, waited)
                yield item
        finally:
            if this_pass == self._pass:
                self._end_pass()

    def _end_pass(self) -> None:
        if self._running is not None:
            self._finished.append(self._with_sources(self._running))
            self._running = None
