"""How well one epoch is shuffled, from the ids the training loop received, in the order it got them.

Each figure compares the epoch's order with storage order: the order of the ids themselves (the
bench's datasets number their rows 0..n-1 in storage order in their ``id`` column; any distinct
sortable ids work, e.g. the even ids a filter keeps, since only their ranks count). Of ``n`` rows,
the row at position ``p`` of the epoch whose id is the ``r``-th smallest has *storage rank* ``r``.

- :func:`spearman`: ``|rho|``, the absolute Spearman rank correlation between position and storage
  rank. 1: storage order or its reverse; a uniform permutation gives about
  ``sqrt(2 / (pi (n - 1)))`` (rho is then about normal with variance ``1 / (n - 1)``).
- :func:`neighbours_kept`: of the ``n - 1`` pairs of rows adjacent in storage (ranks ``r``,
  ``r + 1``), the fraction still adjacent in the epoch, in either order. 1: storage order or its
  reverse; a uniform permutation gives ``2 / n``. It shows what ``|rho|`` misses: rows read in
  runs (a shuffled shard order with rows left in file order has ``|rho|`` near 0 but keeps most
  neighbours).
- :func:`displacement`: the mean distance ``|p - r|`` a row moved, divided by its expectation under
  a uniform permutation, ``(n**2 - 1) / (3 n)`` (about ``n / 3``). 0: storage order; 1: rows move
  as far as a uniform permutation moves them (on average exactly 1 over all permutations); above
  1: further than that, systematically (the reverse of storage order gives about 1.5, the most
  possible, at most 2 for ``n = 2``). It shows what the other two miss: rows that stay near their
  storage place (a shuffle within small windows keeps ``|rho|`` near 1 but moves rows little).

Fewer than two rows have only one order, storage order: 1, 1 and 0. A repeated id (a padded row)
counts as another row, ranked after its earlier copies. Everything is NumPy, ``O(n log n)`` (one
stable sort), with no Python loop over rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ShuffleQuality",
    "displacement",
    "measure",
    "neighbours_kept",
    "spearman",
    "uniform_expectation",
    "worst",
]


@dataclass(frozen=True, kw_only=True)
class ShuffleQuality:
    """The three figures of one epoch of ``rows`` rows (see the module docstring)."""

    rows: int
    spearman: float  # |rho|: 1 storage order (or reversed), about sqrt(2 / (pi (n - 1))) uniform
    neighbours_kept: float  # 1 storage order (or reversed), 2 / n uniform
    displacement: float  # 0 storage order, 1 uniform, about 1.5 reversed


def _storage_order(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """``order[r]`` = the position in the epoch of the row of storage rank ``r``."""
    values = np.asarray(ids)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D sequence of ids, found shape {values.shape}")
    # Stable, so that repeated ids rank in the order the loop received them.
    return np.argsort(values, kind="stable").astype(np.int64, copy=False)


def _ranks(order: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``rank[p]`` = the storage rank of the row at position ``p``: the inverse of ``order``."""
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank


def _spearman(rank: npt.NDArray[np.int64]) -> float:
    n = len(rank)
    if n < 2:
        return 1.0
    # Ranks are distinct (ties broken by position), so the closed form is exact; in floats, as
    # the sum of squares passes 2**63 for a few million rows.
    moved = (rank - np.arange(n, dtype=np.int64)).astype(np.float64)
    rho = 1.0 - 6.0 * float(moved @ moved) / (n * (float(n) * n - 1.0))
    return min(1.0, abs(rho))  # rounding may put an exact reversal a hair above 1


def _neighbours_kept(order: npt.NDArray[np.int64]) -> float:
    n = len(order)
    if n < 2:
        return 1.0
    return float(np.count_nonzero(np.abs(np.diff(order)) == 1)) / (n - 1)


def _displacement(rank: npt.NDArray[np.int64]) -> float:
    n = len(rank)
    if n < 2:
        return 0.0
    mean = float(np.abs(rank - np.arange(n, dtype=np.int64)).mean())
    return mean / ((float(n) * n - 1.0) / (3.0 * n))


def spearman(ids: npt.ArrayLike) -> float:
    """``|rho|`` between position in the epoch and storage rank: 1 storage order, near 0 uniform."""
    return _spearman(_ranks(_storage_order(ids)))


def neighbours_kept(ids: npt.ArrayLike) -> float:
    """The fraction of storage-adjacent pairs adjacent in the epoch: 1 storage order, ``2 / n`` uniform."""
    return _neighbours_kept(_storage_order(ids))


def displacement(ids: npt.ArrayLike) -> float:
    """Mean ``|position - storage rank|`` over its uniform expectation: 0 storage order, 1 uniform."""
    return _displacement(_ranks(_storage_order(ids)))


def measure(ids: npt.ArrayLike) -> ShuffleQuality:
    """All three figures of the epoch whose ids, in the order received, are ``ids`` (one sort)."""
    order = _storage_order(ids)
    rank = _ranks(order)
    return ShuffleQuality(
        rows=len(order),
        spearman=_spearman(rank),
        neighbours_kept=_neighbours_kept(order),
        displacement=_displacement(rank),
    )


def uniform_expectation(rows: int) -> ShuffleQuality:
    """What a uniform random permutation of ``rows`` rows gives on average.

    ``neighbours_kept`` (``2 / n``) and ``displacement`` (1) are exact; ``spearman`` is the
    large-``n`` value ``sqrt(2 / (pi (n - 1)))``, close from about 10 rows on.
    """
    if rows < 2:
        return ShuffleQuality(rows=rows, spearman=1.0, neighbours_kept=1.0, displacement=0.0)
    return ShuffleQuality(
        rows=rows,
        spearman=math.sqrt(2.0 / (math.pi * (rows - 1))),
        neighbours_kept=2.0 / rows,
        displacement=1.0,
    )


def worst(epochs: Sequence[ShuffleQuality]) -> ShuffleQuality | None:
    """Each figure at its least shuffled over ``epochs``, or None for no epochs.

    The highest ``|rho|`` and ``neighbours_kept`` and the lowest ``displacement``, each possibly
    from another epoch: one badly shuffled epoch shows however good the others are.
    """
    if not epochs:
        return None
    return ShuffleQuality(
        rows=max(e.rows for e in epochs),
        spearman=max(e.spearman for e in epochs),
        neighbours_kept=max(e.neighbours_kept for e in epochs),
        displacement=min(e.displacement for e in epochs),
    )
