"""Epoch order: which shard comes when, a pure function of (shards, seed, epoch)."""

from __future__ import annotations

import numpy as np

__all__ = ["epoch_order", "seeded_rng"]

# Separate streams for the separate random decisions, so that no two share a sequence.
_DOMAINS = {"shard-order": 1, "window": 2, "interleave": 3}


def seeded_rng(purpose: str, *key: int) -> np.random.Generator:
    """A generator seeded from a tuple of ints (never from ``seed + epoch``, which collides)."""
    if any(k < 0 for k in key):
        raise ValueError(f"seed material must be non-negative integers, found {key}")
    return np.random.default_rng([_DOMAINS[purpose], *key])


def epoch_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which the shards are read in ``epoch``: storage order, or a permutation."""
    if not shuffle:
        return np.arange(num_shards, dtype=np.int64)
    return seeded_rng("shard-order", seed, epoch).permutation(num_shards).astype(np.int64)
