"""Which rotated pieces' first rows a shuffled read keeps for their turn, within a budget.

A rotated piece is read from a row inside it to its end, then from its first row to where it
started (see :mod:`duckstream.core.interleave`). Its first rows (its *head*) are decoded on
the way to where it starts, since pyarrow cannot start inside a row group without decoding
the rows before it: kept, they are not decoded again at their turn; dropped, they are
decoded twice (8 files of one 64 MB row group of 10 KiB images, each rotated by a quarter on
average: epochs 0.31-0.33 s, 0.25-0.27 s with every head kept, at four times the budget). A
kept head stays in memory from its piece's first read to its turn, so the heads kept at any
time share a budget of rows. Heads are kept smallest first while they fit: each one kept
saves decoding its rows again and opening its row group once more (its first pages,
dictionaries included), so the most heads kept save most (the same images through a shuffle
window's bytes, 4 rounds: kept largest first, 2-3 heads of 8 an epoch, epochs 0.28-0.32 s,
median 0.30; smallest first, 4-6 heads, 0.28-0.31 s, median 0.29).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Piece", "held_heads", "rotations", "stream_indices"]

# A piece of a shard: (shard, first row, row after the last).
Piece = tuple[int, int, int]


def rotations(pieces: Iterable[Piece]) -> list[tuple[int, Piece]]:
    """The heads in a stream's ``pieces``: for each piece followed by the rows of its shard
    that end where it begins, its index and that following piece."""
    listed = list(pieces)
    return [
        (index, following)
        for index, (piece, following) in enumerate(itertools.pairwise(listed))
        if following[0] == piece[0] and following[2] == piece[1] and following[1] < following[2]
    ]


def stream_indices(owners: np.ndarray) -> dict[int, np.ndarray]:
    """Each stream's ranges (indices into the ranges ``owners`` names the stream of), in read
    order: one sort, not a pass over every range a stream."""
    by_stream = np.argsort(owners, kind="stable")
    cuts = np.flatnonzero(np.diff(owners[by_stream])) + 1
    return {int(owners[index[0]]): index for index in np.split(by_stream, cuts) if len(index)}


def held_heads(
    ranges: np.ndarray,
    streams: Mapping[int, np.ndarray],
    pieces: Mapping[int, Sequence[Piece]],
    budget: int,
) -> frozenset[Piece]:
    """The heads (as the pieces that read them, see :func:`rotations`) a read of ``ranges``
    (in read order; ``streams``: each stream's ranges, as :func:`stream_indices` finds them;
    ``pieces``: each stream's pieces) keeps, so that the rows of the heads kept at any range
    add up to ``budget`` or fewer.

    A head is counted from the range where its piece's first rows are read to the range that
    reads its last row.
    """
    sizes = ranges[:, 1] - ranges[:, 0]
    heads: list[tuple[int, int, int, Piece]] = []
    for owner, index in streams.items():
        # Rows the stream has read after each of its ranges.
        read_after = np.cumsum(sizes[index])
        mine = pieces[owner]
        starts = np.concatenate([[0], np.cumsum([hi - lo for _, lo, hi in mine])]).astype(np.int64)
        for position, head in rotations(mine):
            first = int(np.searchsorted(read_after, starts[position], side="right"))
            last = int(np.searchsorted(read_after, starts[position + 2] - 1, side="right"))
            heads.append((head[2] - head[1], int(index[first]), int(index[last]), head))
    held_rows = np.zeros(len(ranges), dtype=np.int64)
    kept: set[Piece] = set()
    for rows, first, last, head in sorted(heads, key=lambda found: (found[0], found[1], found[3])):
        if int(held_rows[first : last + 1].max()) + rows > budget:
            continue
        held_rows[first : last + 1] += rows
        kept.add(head)
    return frozenset(kept)
