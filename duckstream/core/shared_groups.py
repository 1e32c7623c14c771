"""Small row groups decoded once for all the pieces a shuffled read takes from inside them.

pyarrow starts reading a row group at its first row, so a piece that starts inside one
decodes the rows before it once more. A shuffled read cuts a small shard into parts read side
by side, each from a row of its own (see :mod:`duckstream.core.interleave`): ``k`` parts of
one row group decoded about ``(k + 1) / 2`` times its rows (a 50,000-row file among 200 of
100 rows, in 6 parts: epochs 20% longer than reading it whole). Where such a row group is
small (:data:`SHARED_GROUP_BYTES` decoded), the first piece to need it decodes it whole and
the others slice that table. A slot's read holds the tables until it ends, at most
:data:`HELD_BYTES` of them, the least recently used dropped first (a piece that finds its
group dropped decodes it again: slower, never wrong). A stream that slices a held table holds
no decoder of its own.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import pyarrow as pa

from duckstream.core.fork_safe import ForkSafeLock

__all__ = ["HELD_BYTES", "SHARED_GROUP_BYTES", "SharedGroups"]

# A shuffled read enters inside row groups of small shards only (8 MiB or less).
SHARED_GROUP_BYTES = 8 * 1024 * 1024
# As many as the parts of 8 such row groups read at once: a shuffle window's bytes.
HELD_BYTES = 64 * 1024 * 1024


class SharedGroups:
    """Decoded row groups by key, loaded once however many threads ask at the same time: one
    for a slot's read, shared by its streams' readers (each in a thread of its own)."""

    def __init__(self, most_bytes: int = HELD_BYTES) -> None:
        self._most = most_bytes
        self._lock = ForkSafeLock()
        self._tables: OrderedDict[Hashable, pa.Table] = OrderedDict()
        self._held = 0
        self.loads = 0  # row groups decoded (tests count them)
        # One lock per row group being decoded: a second piece waits for the first's table.
        self._loading: dict[Hashable, ForkSafeLock] = {}

    @property
    def held_bytes(self) -> int:
        """Bytes of the tables held now."""
        return self._held

    def table(self, key: Hashable, load: Callable[[], pa.Table]) -> pa.Table:
        """The table held for ``key``, else ``load()``'s, held for the next piece."""
        with self._lock:
            found = self._found(key)
            if found is not None:
                return found
            loading = self._loading.setdefault(key, ForkSafeLock())
        with loading:
            with self._lock:
                found = self._found(key)
            if found is not None:
                return found
            try:
                table = load()
                with self._lock:
                    self.loads += 1
                    self._hold(key, table)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return table

    def _found(self, key: Hashable) -> pa.Table | None:
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
        return table

    def _hold(self, key: Hashable, table: pa.Table) -> None:
        if table.nbytes > self._most:
            return
        self._tables[key] = table
        self._held += table.nbytes
        while self._held > self._most:
            _, dropped = self._tables.popitem(last=False)
            self._held -= dropped.nbytes
