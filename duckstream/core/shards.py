"""The shard plan: a source's rows cut into row ranges of files, from Parquet metadata only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "Shard",
    "plan_fingerprint",
    "plan_shards",
    "plan_summary",
    "skip_empty_groups",
]

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


def skip_empty_groups(
    row_groups: Sequence[Sequence[int]],
    group_counts: Sequence[Sequence[int]],
    *,
    target_rows: int = DEFAULT_SHARD_ROWS,
) -> tuple[list[Shard], list[int]]:
    """Shards over only the row groups that yield rows, and the rows each shard yields.

    ``group_counts[f][g]`` is what row group ``g`` of file ``f`` yields through a filter; a
    group yielding nothing is never read, and shards end on either side of it. Merging and
    ``target_rows`` are as in :func:`plan_shards` (counted in stored rows: that is what is read).
    """
    shards: list[Shard] = []
    counts: list[int] = []
    for file, (groups, yields) in enumerate(zip(row_groups, group_counts, strict=True)):
        if len(groups) != len(yields):
            raise ValueError(f"file {file} has {len(groups)} row groups but {len(yields)} counts")
        start = stop = 0
        count = 0
        for rows, found in zip(groups, yields, strict=True):
            if found < 0 or (found and rows == 0):
                raise ValueError(f"file {file}: a row group of {rows} rows cannot yield {found}")
            cut = stop > start and (found == 0 or stop - start + rows > target_rows)
            if cut:
                shards.append(Shard(file, start, stop))
                counts.append(count)
                count = 0
                start = stop
            if found == 0:
                start = stop = stop + rows
                continue
            stop += rows
            count += found
        if stop > start:
            shards.append(Shard(file, start, stop))
            counts.append(count)
    return shards, counts


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


def plan_summary(
    files: Sequence[str], counts: Sequence[int], query: str | None, table: str | None = None
) -> dict[str, Any]:
    """What a saved state keeps of its plan besides the fingerprint, so that a state refused
    for another plan can say what changed: the SQL, the lake snapshot, or which files.

    A few hundred bytes whatever the number of files: the list itself is kept as a digest.
    """
    listing = json.dumps(list(files), separators=(",", ":")).encode()
    return {
        "files": len(files),
        "first_file": files[0] if files else None,
        "last_file": files[-1] if files else None,
        "files_digest": hashlib.sha256(listing).hexdigest()[:16],
        "rows": int(sum(counts)),
        "sql": query,
        "table": table,
    }
