"""The shard plan: a source's rows cut into row ranges of files, from Parquet metadata only."""

from __future__ import annotations

import hashlib
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

__all__ = [
    "DEFAULT_SHARD_ROWS",
    "FileNames",
    "RowGroups",
    "Shard",
    "ShardTable",
    "packed",
    "plan_fingerprint",
    "plan_shards",
    "plan_summary",
    "skip_empty_groups",
    "starts_inside",
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


@dataclass(frozen=True, eq=False)
class ShardTable(Sequence[Shard]):
    """Shards held as three int64 arrays: a plan of a million shards pickles as three arrays,
    not a million objects. ``table[i]`` is shard ``i`` as a :class:`Shard`.

    Pickled, each shard's file is a step from the previous shard's (0 or 1 in storage order)
    and its stop is its rows, each array in the narrowest type that holds it (see :func:`packed`).
    """

    file: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    @classmethod
    def of(cls, shards: Iterable[Shard]) -> ShardTable:
        if isinstance(shards, ShardTable):
            return shards
        columns = np.array([(s.file, s.start, s.stop) for s in shards], dtype=np.int64).reshape(-1, 3)
        return cls(*(np.ascontiguousarray(column) for column in columns.T))

    @property
    def rows(self) -> np.ndarray:
        """Rows of each shard."""
        rows: np.ndarray = self.stop - self.start
        return rows

    def __len__(self) -> int:
        return len(self.file)

    @overload
    def __getitem__(self, index: int) -> Shard: ...
    @overload
    def __getitem__(self, index: slice) -> ShardTable: ...
    def __getitem__(self, index: int | slice) -> Shard | ShardTable:
        if isinstance(index, slice):
            return ShardTable(self.file[index], self.start[index], self.stop[index])
        return Shard(int(self.file[index]), int(self.start[index]), int(self.stop[index]))

    def __iter__(self) -> Iterator[Shard]:
        return map(Shard, self.file.tolist(), self.start.tolist(), self.stop.tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardTable):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self._columns(), other._columns(), strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        steps = np.diff(self.file, prepend=0)
        return _unpack_shards, (packed(steps), packed(self.start), packed(self.rows))

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.file, self.start, self.stop


def _unpack_shards(steps: np.ndarray, start: np.ndarray, rows: np.ndarray) -> ShardTable:
    first = start.astype(np.int64)
    return ShardTable(np.cumsum(steps, dtype=np.int64), first, first + rows)


@dataclass(frozen=True, eq=False)
class RowGroups(Sequence[tuple[int, ...]]):
    """Rows of each row group of each file, held as one int64 array cut at ``bounds``;
    ``groups[f]`` is file ``f``'s, in storage order. Pickled as the rows and each file's
    number of row groups, in the narrowest types that hold them (see :func:`packed`)."""

    flat: np.ndarray
    bounds: np.ndarray  # file f's row groups are flat[bounds[f]:bounds[f + 1]]

    @classmethod
    def of(cls, per_file: Sequence[Sequence[int]]) -> RowGroups:
        if isinstance(per_file, RowGroups):
            return per_file
        sizes = np.fromiter((len(groups) for groups in per_file), dtype=np.int64, count=len(per_file))
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(per_file), dtype=np.int64, count=int(bounds[-1]))
        return cls(flat, bounds)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def replaced(self, per_file: Mapping[int, Sequence[int]]) -> RowGroups:
        """These row groups, with those of each file in ``per_file`` replaced by its own (a
        few files among a million: no loop over the others)."""
        sizes = np.diff(self.bounds)
        runs: list[np.ndarray] = []
        last = 0
        for file in sorted(per_file):
            runs += [self.flat[self.bounds[last] : self.bounds[file]], np.asarray(per_file[file], np.int64)]
            sizes[file] = len(per_file[file])
            last = file + 1
        runs.append(self.flat[self.bounds[last] :])
        return RowGroups(np.concatenate(runs), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    @overload
    def __getitem__(self, file: int) -> tuple[int, ...]: ...
    @overload
    def __getitem__(self, file: slice) -> Sequence[tuple[int, ...]]: ...
    def __getitem__(self, file: int | slice) -> tuple[int, ...] | Sequence[tuple[int, ...]]:
        if isinstance(file, slice):
            return [self[f] for f in range(len(self))[file]]
        if file < 0:
            file += len(self)
        if not 0 <= file < len(self):
            raise IndexError(f"expected a file number below {len(self)}, found {file}")
        return tuple(self.flat[self.bounds[file] : self.bounds[file + 1]].tolist())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowGroups):
            return NotImplemented
        return np.array_equal(self.flat, other.flat) and np.array_equal(self.bounds, other.bounds)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
        return _unpack_row_groups, (packed(self.flat), packed(np.diff(self.bounds)))


def _unpack_row_groups(flat: np.ndarray, sizes: np.ndarray) -> RowGroups:
    bounds = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, dtype=np.int64, out=bounds[1:])
    return RowGroups(flat.astype(np.int64), bounds)


@dataclass(frozen=True, eq=False)
class FileNames(Sequence[str]):
    """A plan's file names held as one string cut at ``bounds``: a million names are one
    string, not a million objects. Pickled compressed: names share long prefixes."""

    joined: str
    bounds: np.ndarray  # name i is joined[bounds[i]:bounds[i + 1]]

    @classmethod
    def of(cls, names: Iterable[str]) -> FileNames:
        if isinstance(names, FileNames):
            return names
        listed = list(names)
        bounds = np.zeros(len(listed) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, listed), dtype=np.int64, count=len(listed)), out=bounds[1:])
        return cls("".join(listed), bounds)

    def __len__(self) -> int:
        return len(self.bounds) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"expected a file number below {len(self)}, found {index}")
        return self.joined[self.bounds[index] : self.bounds[index + 1]]

    def __iter__(self) -> Iterator[str]:
        joined = self.joined
        return (joined[a:b] for a, b in itertools.pairwise(self.bounds.tolist()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FileNames):
            return NotImplemented
        return self.joined == other.joined and np.array_equal(self.bounds, other.bounds)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[bytes, np.ndarray]]:
        # A name that is not UTF-8 on disk holds lone surrogates (os.fsdecode): they travel too.
        encoded = self.joined.encode("utf-8", "surrogatepass")
        return _unpack_names, (zlib.compress(encoded, 1), packed(np.diff(self.bounds)))


def _unpack_names(compressed: bytes, lengths: np.ndarray) -> FileNames:
    bounds = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, dtype=np.int64, out=bounds[1:])
    return FileNames(zlib.decompress(compressed).decode("utf-8", "surrogatepass"), bounds)


def packed(values: np.ndarray) -> np.ndarray:
    """Integers in the narrowest of uint8, uint16 and uint32 that holds them (else as they are),
    as they travel pickled: row counts below 65,536 take two bytes, not eight."""
    if len(values) == 0 or values.min() < 0:
        return values
    top = int(values.max())
    for kind in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(kind).max:
            return values.astype(kind)
    return values


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


def starts_inside(
    shards: ShardTable, row_groups: RowGroups, plain: np.ndarray, yields: RowGroups | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per shard, where its file's row groups start inside it (in rows after its first row),
    as one flat array cut at bounds: shard i's are ``flat[bounds[i]:bounds[i + 1]]``. A shard
    where ``plain`` is false has none.

    With ``yields`` (rows each row group yields through a filter or a snapshot's deletes;
    shards then start where row groups do) the offsets count yielded rows, and a row group
    that yields nothing adds no start of its own.
    """
    # Row groups of all files one after another: file f's start at ends[g] for g from
    # row_groups.bounds[f] to row_groups.bounds[f + 1] (its last, the file's end).
    ends = np.zeros(len(row_groups.flat) + 1, dtype=np.int64)
    np.cumsum(row_groups.flat, out=ends[1:])
    first = row_groups.bounds[shards.file]
    base = ends[first] + shards.start
    lo = np.maximum(np.searchsorted(ends, base, side="right"), first)
    hi = np.minimum(
        np.searchsorted(ends, base + shards.rows, side="left"), row_groups.bounds[shards.file + 1] + 1
    )
    sizes = np.where(plain, np.maximum(hi - lo, 0), 0)
    bounds = np.zeros(len(shards) + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    picks = np.arange(bounds[-1]) + np.repeat(lo - bounds[:-1], sizes)
    if yields is None:
        return ends[picks] - np.repeat(base, sizes), bounds
    yielded = np.zeros(len(yields.flat) + 1, dtype=np.int64)
    np.cumsum(yields.flat, out=yielded[1:])
    offsets = yielded[picks] - np.repeat(yielded[lo - 1], sizes)
    # A start no later than the one before it (or the shard's own) follows a group yielding
    # nothing; one at the shard's end (its last groups yield nothing) starts no rows.
    before = np.concatenate([[0], offsets[:-1]])
    before[bounds[:-1][sizes > 0]] = 0
    owner = np.repeat(np.arange(len(shards)), sizes)
    # (Clipped: a shard outside the row groups, read by the catalog's scan, has no starts.)
    last = np.minimum(np.searchsorted(ends, base + shards.rows, side="left"), len(yielded) - 1)
    total = yielded[last] - yielded[lo - 1]
    keep = (offsets > before) & (offsets < total[owner])
    kept = np.zeros(len(shards) + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[keep], minlength=len(shards)), out=kept[1:])
    return offsets[keep], kept


def plan_fingerprint(
    files: Sequence[str], shards: Sequence[Shard], counts: Sequence[int] | np.ndarray, query: str | None
) -> str:
    """A short stable hash of everything that decides which rows exist and where."""
    table = ShardTable.of(shards)
    payload = json.dumps(
        {
            "files": list(files),
            "shards": np.column_stack([table.file, table.start, table.stop]).tolist(),
            "counts": np.asarray(counts, dtype=np.int64).tolist(),
            "query": query,
        },
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def plan_summary(
    files: Sequence[str], counts: Sequence[int] | np.ndarray, query: str | None, table: str | None = None
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
        "rows": int(np.asarray(counts, dtype=np.int64).sum()),
        "sql": query,
        "table": table,
    }
