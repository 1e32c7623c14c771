"""The shard plan: a source's rows cut into row ranges of files, from Parquet metadata only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_SHARD_ROWS", "Shard", "plan_fingerprint", "plan_shards"]

# Shards are the unit of shard-order shuffling and of one read query. Small row groups merge
# up to this size; large row groups are never cut, since a sub-range still decodes them whole.
DEFAULT_SHARD_ROWS = 65_536


@dataclass(frozen=True, order=True)
class Shard:
    """Rows ``start`` (inclusive) to ``stop`` (exclusive) of file number ``file`` of the plan."""

    file: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(row_groups: Sequence[Sequence[int]], *, target_rows: int = DEFAULT_SHARD_ROWS) -> list[Shard]:
    """Shards for files whose row groups hold ``row_groups[f]`` rows, in storage order.

    Consecutive row groups of one file merge while the shard stays within ``target_rows``;
    a shard never spans two files and never cuts a row group. Empty row groups vanish.
    """
    if target_rows < 1:
        raise ValueError(f"target_rows must be at least 1, found {target_rows}")
    shards: list[Shard] = []
    for file, groups in enumerate(row_groups):
        start = stop = 0
        for rows in groups:
            if rows < 0:
                raise ValueError(f"file {file} has a row group of {rows} rows")
            if stop > start and stop - start + rows > target_rows:
                shards.append(Shard(file, start, stop))
                start = stop
            stop += rows
        if stop > start:
            shards.append(Shard(file, start, stop))
    return shards


def plan_fingerprint(
    files: Sequence[str], shards: Sequence[Shard], counts: Sequence[int], query: str | None
) -> str:
    """A short stable hash of everything that decides which rows exist and where."""
    payload = json.dumps(
        {
            "files": list(files),
            "shards": [[s.file, s.start, s.stop] for s in shards],
            "counts": list(counts),
            "query": query,
        },
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
