"""The in-worker shuffle: a seeded permutation of each window of ``buffer`` consecutive rows.

A window permutation is a bounded buffer whose output is a pure function of positions: which
rows a worker has emitted after ``n`` rows is known without reading data, so a resumed run
yields exactly the rows that sat in the buffer, and the rest.
"""

from __future__ import annotations

import numpy as np

from duckstream.core.order import seeded_rng
from duckstream.core.ranges import expand
from duckstream.core.world import World

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "SHUFFLE_BUFFER_BYTES",
    "default_shuffle_buffer",
    "emit_order",
    "unread",
    "window_key",
    "window_permutation",
]

DEFAULT_SHUFFLE_BUFFER = 32_768
# A window is read whole before its first row is emitted: by default it holds this many bytes
# of rows, and at most DEFAULT_SHUFFLE_BUFFER rows. Interleaved stripes (core.interleave) already
# mix rows from all over a worker's share into every window, so a larger window of narrow rows
# shuffles hardly better (|Spearman| and neighbours kept alike at 16,384 and 65,536 rows). The
# cap is the fastest measured here for 185-byte rows: a larger window misses the CPU's caches
# when gathered, a smaller one reads each piece in more, shorter stripes. A window that holds a
# row group whole shuffles it without entering it anywhere but its start: nothing is decoded twice.
SHUFFLE_BUFFER_BYTES = 64 * 1024 * 1024


def default_shuffle_buffer(row_bytes: int) -> int:
    """Rows per shuffle window: 64 MiB of rows, between 256 and 32,768 rows."""
    return max(256, min(DEFAULT_SHUFFLE_BUFFER, SHUFFLE_BUFFER_BYTES // max(1, row_bytes)))


def window_key(seed: int, epoch: int, stage: int, world: World) -> tuple[int, ...]:
    """Seed material of one slot's shuffle windows (and of its interleaved read order)."""
    return (seed, epoch, stage, world.world_size, world.rank, world.num_workers, world.worker)


def window_permutation(size: int, key: tuple[int, ...], window: int, shuffle: bool) -> np.ndarray:
    """The read order within window number ``window`` of ``size`` rows."""
    if not shuffle:
        return np.arange(size, dtype=np.int64)
    return seeded_rng("window", *key, window).permutation(size).astype(np.int64)


def unread(
    rows: int, emitted: int, buffer: int, key: tuple[int, ...], shuffle: bool
) -> tuple[np.ndarray, int]:
    """What is left of a stream of ``rows`` after it emitted ``emitted`` rows.

    Returns the stream indices still in the current window's buffer, and the index from which
    the stream is unread.
    """
    emitted = min(emitted, rows)
    window, inside = divmod(emitted, buffer)
    start = window * buffer
    size = min(buffer, rows - start)
    if inside == 0 or size <= 0:
        return np.empty(0, dtype=np.int64), start
    order = window_permutation(size, key, window, shuffle)
    return np.sort(start + order[inside:]), start + size


def emit_order(ranges: np.ndarray, buffer: int, key: tuple[int, ...], shuffle: bool) -> np.ndarray:
    """Every position a stream over ``ranges`` emits, in emit order (a reference for checks)."""
    positions = expand(ranges)
    out = [
        positions[start : start + buffer][
            window_permutation(len(positions[start : start + buffer]), key, start // buffer, shuffle)
        ]
        for start in range(0, len(positions), buffer)
    ]
    return np.concatenate(out) if out else positions
