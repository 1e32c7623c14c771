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
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.core import local_footers
from duckstream.core.fork_safe import ForkSafeLock
from duckstream.core.interleave import LEFT_ORDER_WARNING, Layout, visible_order
from duckstream.core.retry import transient
from duckstream.core.source import is_remote
from duckstream.errors import SourceError
from duckstream.redact import get_logger, redact

if TYPE_CHECKING:
    from duckstream.core.planning import StreamPlan

__all__ = ["copied_groups", "local_copy"]

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

# Copies this process found or made: (file, its size and time, columns, row groups, folder) -> path.
_lock = ForkSafeLock()
_made: dict[tuple[object, ...], str | None] = {}  # None: it could not be written


def copied_groups(plan: StreamPlan, base: Layout, streams: int, ranks: int) -> dict[int, tuple[int, ...]]:
    """Per file to read from a local copy when shuffled, the rows of each of the copy's row
    groups (each of the file's row groups cut into about equal parts); empty where the plan's
    own row groups mix well enough (``base``, its layout over them, read ``streams`` at once,
    shared by ``ranks`` ranks).

    Only files pyarrow decodes whole, where output row ``k`` of a shard is its file row
    ``start + k``, are copied (a lake table's too): where a filter or a snapshot's deletes
    thin the rows, where a row group starts among the kept rows is known for the file's own
    row groups only. Where one such file holds large row groups, none is copied.
    """
    if streams <= 1 or not plan.narrow:
        return {}
    # Whatever the buffer: a small one mixes no more, and a buffer that holds the rows makes
    # the copy needless but harmless (rows of at most 64 MiB, copied once).
    if visible_order(base, 0, streams, ranks) <= LEFT_ORDER_WARNING:
        return {}
    fixed = ~np.asarray(base.anywhere, dtype=bool)
    most = max(1, _COPY_GROUP_BYTES // max(1, plan.row_bytes))
    pieces = _PIECES_A_STREAM * streams * ranks
    rows = max(1, min(most, max(_MIN_COPY_GROUP_ROWS, -(-plan.num_rows // pieces))))
    copied: dict[int, tuple[int, ...]] = {}
    for file in np.unique(plan.shards.file[fixed]).tolist():
        groups = plan.row_groups[file]
        if max(groups, default=0) <= rows:
            continue
        thinned = plan.lake is not None and plan.lake.deleted_rows(file)
        if not plan.decoded(file) or thinned or (plan.yields is not None and plan.yields[file] != groups):
            # All or none: one large piece left among the copies' small ones would be read in
            # one group's stretch of the epoch (a lake file with deletes among three copied
            # kept |Spearman| 0.42, against 0.12 with all four rotated in place).
            return {}
        copied[file] = tuple(part for group in groups for part in _parts(group, rows))
    return copied


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
    key = hashlib.sha256(json.dumps([path, identity, list(columns), list(groups)]).encode()).hexdigest()[:24]
    target = directory / f"recut-{key}.parquet"
    made: str | None = str(target)
    try:
        if not target.exists():
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / f".recut-{key}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not target.exists():
                    _write(path, parquet, list(columns), list(groups), target)
    except OSError as exc:
        log.warning(
            "cannot copy %s to %s (%s): a shuffled read decodes parts of its row groups again "
            "instead; set cache_dir to a writable local folder with room for it",
            redact(path),
            directory,
            redact(str(exc)),
        )
        made = None
    with _lock:
        _made[known] = made
    return made


def _write(path: str, parquet: pq.ParquetFile, columns: list[str], groups: list[int], target: Path) -> None:
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
    schema = pa.schema([parquet.schema_arrow.field(c) for c in columns])
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
