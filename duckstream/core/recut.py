"""Local copies, in small row groups, of the files a shuffled read could not mix otherwise.

A shuffled read mixes a slot's rows by reading many pieces side by side, each from where a row
group starts (see :mod:`duckstream.core.interleave`): pyarrow decodes a row group from its
first page, so a piece that starts inside one decodes the rows before it once more. A source
of a few row groups larger than a shuffle window (pyarrow writes a file of fewer than a million
rows as one row group) leaves a read few pieces, each read in storage order: one 196 MiB row
group of 10 KiB images kept |Spearman| 0.36 of its order in one process. Cut into 8 pieces
entered anywhere it kept 0.055 for 4-5x the epoch's decoding, and DuckDB's reads of a
``file_row_number`` range skip nothing cheaper (measured: 8 ranges of one row group cost 3x
reading it whole).

Such files are rewritten instead, once, into a local copy of the same rows in the same order,
in row groups of at most 8 MiB, and small enough that each rank's rows make 8 pieces for each
stream it reads at once (at least 64 rows), and a shuffled read reads the copy: its pieces
start where the copy's row groups do. The copy costs one read and one write of those files,
into the cache folder (as a materialised result does), and is reused while the file is
unchanged. An unshuffled read reads the file itself.

Which files are copied depends on the plan and the world size alone (whatever the buffer), so
that every rank and worker of a stage works out the same read order, and a resumed stage the
order of each stage before it, under its own world.

Where a filter or a snapshot's deletes thin a file's rows, the read order must know what each
of the copy's row groups yields: a plan that counts per row group counts per part of each
large row group too (:class:`PartCounts`, one pass either way), and a copy's row groups are
made of those parts. The copy holds every row, so that file row ``r`` is its row ``r``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.core import local_footers, stale_copies
from duckstream.core.fork_safe import ForkSafeLock
from duckstream.core.interleave import LEFT_ORDER_WARNING, Layout, visible_order
from duckstream.core.retry import transient
from duckstream.core.shards import RowGroups
from duckstream.core.source import is_remote
from duckstream.errors import SourceError
from duckstream.redact import get_logger, redact

if TYPE_CHECKING:
    from duckstream.core.planning import StreamPlan

__all__ = [
    "Copy",
    "PartCounts",
    "copied_groups",
    "count_parts",
    "group_sums",
    "local_copy",
    "merged_parts",
    "part_rows",
]

log = get_logger(__name__)

# A copy's row groups: small enough that a slot finds many pieces, large enough that a
# decoder's fixed cost per row group stays small against its rows.
_COPY_GROUP_BYTES = 8 * 1024 * 1024
_MIN_COPY_GROUP_ROWS = 64
# Pieces a rank's rows should make, per stream it reads at once: 8 groups of pieces read side
# by side. Measured on 20,000 rows of 4 KiB shared by 4 ranks through a 1,000-row buffer
# (|Spearman| median over 5 seeds): 2 groups a rank 0.050, 1 group 0.007 (but 0.057 for one
# rank, where 8 MiB row groups made 2), 8 groups 0.015; 8 held for 1-8 ranks and 0-4 workers.
_PIECES_A_STREAM = 8
# Parts a plan counts its rows in, where it counts what each row group yields: enough for a
# copy's row groups of 8 pieces a stream for 16 streams on each of 32 ranks, and parts small
# enough against a copy's row groups (64 rows or more) that runs of them come out about equal.
_COUNTED_PARTS = 4_096
_MIN_COUNTED_PART_ROWS = 16

# Copies this process found or made: (file, its size and time, columns, row groups, folder) -> path.
_lock = ForkSafeLock()
_made: dict[tuple[object, ...], str | None] = {}  # None: it could not be written


class Copy(NamedTuple):
    """A file as a shuffled read reads it from its local copy."""

    rows: tuple[int, ...]  # rows of each of the copy's row groups
    # what each yields through the query and the snapshot's deletes (None: its rows), where
    # the plan counts that per row group
    yields: tuple[int, ...] | None

    @property
    def counts(self) -> tuple[int, ...]:
        """What each of the copy's row groups yields."""
        return self.rows if self.yields is None else self.yields


@dataclass(frozen=True)
class PartCounts:
    """What each part of a plan's row groups yields, where the plan counts what each row group
    yields (a filter, a snapshot's deletes): each row group cut into the fewest about equal
    parts of at most ``rows`` rows (see :func:`count_parts`); ``yields[f]`` are file ``f``'s."""

    rows: int
    yields: RowGroups


def part_rows(row_groups: Sequence[Sequence[int]], row_bytes: int) -> int:
    """Rows of the parts a plan of ``row_groups`` counts its yields in: about 4,096 parts in
    all, of 16 rows or more and at most 8 MiB (a copy's row groups' most)."""
    stored = sum(sum(groups) for groups in row_groups)
    most = max(1, _COPY_GROUP_BYTES // max(1, row_bytes))
    return max(1, min(most, max(_MIN_COUNTED_PART_ROWS, -(-stored // _COUNTED_PARTS))))


def count_parts(groups: Sequence[int], rows: int) -> list[int]:
    """Rows of each part of a file's row groups ``groups``, cut into parts of at most ``rows``."""
    return [part for group in groups for part in _parts(group, rows)]


def group_sums(groups: Sequence[int], rows: int, per_part: Sequence[int]) -> list[int]:
    """``per_part`` (one number per part of :func:`count_parts`) summed per row group."""
    if not groups:
        return []
    firsts = np.cumsum([0, *(len(_parts(group, rows)) for group in groups[:-1])])
    return [int(n) for n in np.add.reduceat(np.asarray(per_part, dtype=np.int64), firsts)]


def copied_groups(plan: StreamPlan, base: Layout, streams: int, ranks: int) -> dict[int, Copy]:
    """Per file to read from a local copy when shuffled, the copy's row groups (each of the
    file's row groups cut into about equal parts); empty where the plan's own row groups mix
    well enough (``base``, its layout over them, read ``streams`` at once, shared by
    ``ranks`` ranks).

    Only files pyarrow decodes are copied (a lake table's too): DuckDB's reads of a file go
    through its name or the catalog's scan. Where a filter or a snapshot's deletes thin the
    rows, the copy's row groups are made of the parts the plan counted (:class:`PartCounts`);
    where it counted none (a filter counted shard by shard), no file is copied.
    """
    if streams <= 1:
        return {}
    # Whatever the buffer: a small one mixes no more, and a buffer that holds the rows makes
    # the copy needless but harmless (rows of at most 64 MiB, copied once).
    if visible_order(base, 0, streams, ranks) <= LEFT_ORDER_WARNING:
        return {}
    most = max(1, _COPY_GROUP_BYTES // max(1, plan.row_bytes))
    pieces = _PIECES_A_STREAM * streams * ranks
    # Rows read, kept or not: a copy's row group is read whole.
    rows = max(1, min(most, max(_MIN_COPY_GROUP_ROWS, -(-int(plan.shards.rows.sum()) // pieces))))
    copied: dict[int, Copy] = {}
    # All or none, small shards' files too: one large piece left among the copies' small ones
    # is read in a stretch of the epoch of its own (a lake file with deletes among three
    # copied kept |Spearman| 0.42, against 0.12 with all four rotated in place; a file of
    # 2,000 rows small enough to enter anywhere, 0.53: the first fifth of the epoch its rows).
    # Files read with a row group larger than the copy's (found without a loop over a million).
    groups = plan.row_groups
    owner = np.repeat(np.arange(len(groups), dtype=np.int64), np.diff(groups.bounds))
    for file in np.intersect1d(owner[groups.flat > rows], plan.shards.file).tolist():
        copy = _copy(plan, file, rows)
        if copy is None:
            return {}
        copied[file] = copy
    return copied


def _copy(plan: StreamPlan, file: int, rows: int) -> Copy | None:
    """File ``file``'s copy in row groups of about ``rows`` rows; None where it cannot be read
    from one."""
    if not plan.decoded(file):
        return None
    groups = plan.row_groups[file]
    if plan.yields is None:
        # Output row k of a shard is file row start + k, unless a filter or deletes thin them.
        thinned = not plan.narrow or (plan.lake is not None and plan.lake.deleted_rows(file))
        if thinned:
            return None
        return Copy(tuple(count_parts(groups, rows)), None)
    counted = plan.parts
    if counted is None:
        return None
    return merged_parts(groups, counted.rows, counted.yields[file], rows)


def merged_parts(groups: Sequence[int], part_rows: int, part_yields: Sequence[int], rows: int) -> Copy:
    """A copy of row groups ``groups`` in row groups of about ``rows`` rows, each made of
    whole parts (of :func:`count_parts` by ``part_rows``), with what each yields."""
    yields = np.asarray(part_yields, dtype=np.int64)
    made_rows: list[int] = []
    made_yields: list[int] = []
    first = 0
    for group in groups:
        cut = np.asarray(_parts(group, part_rows), dtype=np.int64)
        kept = yields[first : first + len(cut)]
        first += len(cut)
        # The fewest about equal runs of parts that keep a row group near ``rows``.
        runs = min(len(cut), -(-group // rows) if group else 1)
        starts = np.flatnonzero(np.diff(np.arange(len(cut)) * runs // len(cut), prepend=-1))
        made_rows += np.add.reduceat(cut, starts).tolist()
        made_yields += np.add.reduceat(kept, starts).tolist()
    return Copy(tuple(made_rows), tuple(made_yields))


def _parts(rows: int, most: int) -> list[int]:
    """``rows`` cut into the fewest about equal parts of at most ``most`` rows."""
    count = max(1, -(-rows // most))
    return [int(n) for n in np.diff(np.arange(count + 1, dtype=np.int64) * rows // count)]


def local_copy(
    path: str,
    opened: Callable[[], pq.ParquetFile],
    columns: Sequence[str],
    groups: Sequence[int],
    directory: Path,
) -> str | None:
    """The local copy of ``columns`` of ``path`` (``opened()`` opens it) in row groups of
    ``groups`` rows, written once (a process that finds another writing it waits for it).
    A local file changed since its copy was made is copied again. None where the copy cannot
    be written: the file is then read in place, the same rows in the same order, its rows
    before each piece decoded again."""
    local = None if is_remote(path) else local_footers.identity(path.removeprefix("file://"))
    known = (path, local, tuple(columns), tuple(groups), str(directory))
    with _lock:
        found = _made.get(known, "")
    # Each piece of a shuffled read opens the file anew: only the first looks further.
    if found is None or (found and os.path.exists(found)):
        return found
    parquet = opened()
    footer = parquet.metadata
    identity = [local, footer.num_rows, footer.serialized_size]
    identity += [footer.row_group(g).total_byte_size for g in range(footer.num_row_groups)]
    # Named by the file, its version and what is read of it: a copy of an older version of
    # the same file is found by name, and removed once the new one is made. A local file by
    # its absolute path: the same relative path from another folder is another file.
    named = path if is_remote(path) else os.path.abspath(path.removeprefix("file://"))
    source, version, read = (_digest(part, 12) for part in ([named], identity, [list(columns), list(groups)]))
    key = f"{source}-{version}-{read}"
    target = directory / f"recut-{key}.parquet"
    made: str | None = str(target)
    try:
        if not target.exists():
            directory.mkdir(parents=True, exist_ok=True)
            with open(stale_copies.lock_of(target), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not target.exists():
                    _write(path, parquet, list(columns), list(groups), target, copy_of=named)
                    stale_copies.remove_older(path, directory, source, version)
    except OSError as exc:
        log.warning(
            "cannot copy %s to %s (%s): a shuffled read decodes parts of its row groups again "
            "instead; set cache_dir to a writable local folder with room for it",
            redact(path),
            directory,
            redact(str(exc)),
        )
        made = None
    if made is not None:
        stale_copies.mark_used(target)
        stale_copies.prune(directory)
    with _lock:
        _made[known] = made
    return made


def _digest(value: object, length: int) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:length]


def _write(
    path: str, parquet: pq.ParquetFile, columns: list[str], groups: list[int], target: Path, *, copy_of: str
) -> None:
    footer = parquet.metadata
    wanted = set(columns)
    stored = sum(
        chunk.total_compressed_size
        for chunk in (
            footer.row_group(g).column(c)
            for g in range(footer.num_row_groups)
            for c in range(footer.num_columns)
        )
        if chunk.path_in_schema.split(".")[0] in wanted
    )
    log.warning(
        "a shuffled read of %s copies %s (%.0f MiB) to %s once, in %d row groups instead of %d, "
        "so that its rows can be mixed: row groups this large are read in one pass each. "
        "Rewrite the file in row groups of about 8 MiB to read it in place",
        redact(path),
        ", ".join(columns),
        stored / 2**20,
        target,
        len(groups),
        footer.num_row_groups,
    )
    partial = target.with_name(f".{target.stem}-{os.getpid()}.parquet")
    # The copy names its file, so that a copy of a file gone is removed (see stale_copies).
    schema = pa.schema(
        [parquet.schema_arrow.field(c) for c in columns], metadata={stale_copies.COPY_OF: copy_of}
    )
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for part in _read(path, parquet, columns, groups):
                writer.write_table(part, row_group_size=max(1, part.num_rows))
        made = pq.read_metadata(partial)
        written = [made.row_group(i).num_rows for i in range(made.num_row_groups)]
        if written != groups:
            raise SourceError(
                f"cannot copy {redact(path)}: it holds {made.num_rows} rows in the columns read, "
                f"where the stream was planned for {sum(groups)}; the file changed since the "
                "stream was planned"
            )
        os.replace(partial, target)  # atomic: readers on this node see a whole file or none
    finally:
        partial.unlink(missing_ok=True)


def _read(path: str, parquet: pq.ParquetFile, columns: list[str], groups: list[int]) -> Iterator[pa.Table]:
    """:func:`_regrouped`, where a file that cannot be read raises SourceError; an object
    store that does not answer raises OSError, so that the read goes on in place, waiting it
    out (see duckstream.core.retry)."""
    try:
        yield from _regrouped(parquet, columns, groups)
    except (OSError, pa.ArrowException) as exc:
        if is_remote(path) and transient(exc):
            raise OSError(redact(str(exc))) from None
        raise SourceError(
            f"cannot read {redact(path)} to copy it: {redact(str(exc))}; the file is damaged, "
            "or changed since the stream was planned"
        ) from None


def _regrouped(parquet: pq.ParquetFile, columns: list[str], groups: list[int]) -> Iterator[pa.Table]:
    """The file's rows of ``columns``, in tables of ``groups`` rows each, one batch at a time."""
    sizes = iter(groups)
    want = next(sizes, 0)
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in parquet.iter_batches(batch_size=max(groups, default=1), columns=columns, use_threads=False):
        while batch.num_rows:
            take = min(batch.num_rows, want - count)
            held.append(batch.slice(0, take))
            batch, count = batch.slice(take), count + take
            if count == want:
                yield pa.Table.from_batches(held, schema=held[0].schema)
                held, count, want = [], 0, next(sizes, 0)
