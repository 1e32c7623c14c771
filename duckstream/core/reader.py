"""One worker's reader: row ranges of shards as Arrow batches, through DuckDB or straight Parquet."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from duckstream import engine
from duckstream.core import checked_rows, local_footers, remote_files
from duckstream.core.batch_sql import BatchSQL
from duckstream.core.lake import file_index_fence
from duckstream.core.lake_files import all_deleted
from duckstream.core.planning import cache_directory, decoded_columns
from duckstream.core.recut import Copy, local_copy
from duckstream.core.retry import Backoff, transient
from duckstream.core.shards import Shard
from duckstream.core.shared_groups import SHARED_GROUP_BYTES, SharedGroups
from duckstream.core.source import is_remote
from duckstream.errors import SourceError
from duckstream.redact import redact
from duckstream.storage import pyarrow_s3

if TYPE_CHECKING:
    from duckstream.core.planning import StreamPlan

__all__ = ["ShardReader", "SqlConnections", "default_threads", "read_batch_rows"]

_READ_BATCH_BYTES = 4 * 1024 * 1024
_READ_BUFFER_BYTES = 1024 * 1024
_NONE_DELETED = np.empty(0, dtype=np.int64)
_MAX_DELETED_RUNS = 16


def read_batch_rows(row_bytes: int) -> int:
    """Rows per read batch: about 4 MiB of data, between 64 and 8,192 rows."""
    return max(64, min(8_192, _READ_BATCH_BYTES // max(1, row_bytes)))


# The user's SQL reads `source`; per shard, three variables point it at a row range of a file.
_SHARD_VIEW = """
CREATE OR REPLACE TEMP VIEW source AS
SELECT * EXCLUDE (file_row_number)
FROM read_parquet(getvariable('duckstream_file'), file_row_number = true)
WHERE file_row_number BETWEEN getvariable('duckstream_first') AND getvariable('duckstream_last')
"""


# The same for a pinned lake table, read through its catalog (deletes and inlined rows applied).
_LAKE_SHARD_VIEW = f"""
CREATE OR REPLACE TEMP VIEW source AS
SELECT * FROM {{scan}}
WHERE file_index = getvariable('duckstream_file_index')
  AND file_row_number BETWEEN getvariable('duckstream_first') AND getvariable('duckstream_last')
{file_index_fence()}
"""


def default_threads(readers: int) -> int:
    """Threads per reader so that this node's readers do not oversubscribe its cores.

    ``readers`` is this rank's DataLoader workers; ``LOCAL_WORLD_SIZE`` (set by torchrun and
    Lightning) says how many ranks share the node.
    """
    try:
        ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks_here = 1
    return max(1, (os.cpu_count() or 1) // (max(1, readers) * ranks_here))


class SqlConnections:
    """One DuckDB database for the pieces a shuffled read has DuckDB read from the files
    themselves, several at once: opened on first use (its extensions loaded, a lake's catalog
    attached), a cursor for each piece. A connection of its own for each piece attached a
    lake's catalog again, about 250 ms a piece, ten times what reading it took."""

    def __init__(self, plan: StreamPlan, *, threads: int) -> None:
        self._plan = plan
        self._threads = threads
        self._lock = threading.Lock()
        self._base: duckdb.DuckDBPyConnection | None = None

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own (its views and variables) to the shared database."""
        with self._lock:
            if self._base is None:
                self._base = _database(self._plan, self._threads)
            return self._base.cursor()

    def close(self) -> None:
        with self._lock:
            if self._base is not None:
                self._base.close()
                self._base = None


class ShardReader:
    """Reads rows ``lo..hi`` of a shard's output; opens its connection on first use.

    pyarrow decodes the Parquet files (it exports Arrow faster than DuckDB). Plain projections
    (``SELECT a, b FROM source``) need nothing more; other row-local queries run in DuckDB over
    the decoded batches (:mod:`duckstream.core.batch_sql`). Only what pyarrow cannot read alone
    (a lake table's inlined rows, say) runs in DuckDB on one shard.
    """

    def __init__(
        self,
        plan: StreamPlan,
        *,
        threads: int,
        batch_rows: int | None = None,
        copied: Mapping[int, Copy] | None = None,
        shared: SharedGroups | None = None,
        connections: SqlConnections | None = None,
    ) -> None:
        self._plan = plan
        # Where the DuckDB connection for files DuckDB reads itself comes from (else its own).
        self._connections = connections
        # Small row groups decoded once for the pieces read from inside them (a slot's).
        self._shared = shared
        # Files read from a local copy (see duckstream.core.recut): their copy's row groups,
        # and where the copy lies, once made.
        self._copied = copied or {}
        self._copies: dict[int, str | None] = {}
        self._threads = threads
        self._batch_rows = batch_rows or read_batch_rows(plan.row_bytes)
        self._con: duckdb.DuckDBPyConnection | None = None
        self._parquet: dict[int, tuple[str, pq.ParquetFile]] = {}
        self._filesystem: Any = None
        self._sql = BatchSQL(plan.batch, plan.schema) if plan.batch is not None else None
        self._deleted: dict[int, np.ndarray] = {}
        self._yields: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def batch_rows(self) -> int:
        """Rows per read batch (the last of a shard's range may be shorter)."""
        return self._batch_rows

    def read(self, shard: Shard, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
        if hi <= lo:
            return iter(())
        if not self._plan.decoded(shard.file):
            return self._read_sql(shard, lo, hi)
        if self._plan.columns is not None:
            first, stop = self._file_rows(shard, lo, hi)
            return self._read_parquet(shard.file, self._plan.columns, first, stop)
        assert self._sql is not None
        return self._read_batch_sql(self._sql, shard, lo, hi)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
        if self._sql is not None:
            self._sql.close()
        self._parquet = {}

    def _typed(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        # DuckDB and Parquet lose fixed-size lists; the plan's schema has them back.
        return batch if batch.schema == self._plan.schema else batch.cast(self._plan.schema)

    # -- straight Parquet ------------------------------------------------------------------

    def _read_batch_sql(self, sql: BatchSQL, shard: Shard, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
        batch = self._plan.batch
        assert batch is not None
        # Without a filter or UNNEST output row k is input row k: read only lo..hi. Otherwise
        # output row lo is found by running its row group (or the shard) from its start.
        if self._plan.narrow:
            (first, stop), skip = self._file_rows(shard, lo, hi), 0
        else:
            first, stop, skip = self._yielding_rows(shard, lo, hi)
        read = self._read_parquet(
            shard.file, batch.reads, first, stop, typed=False, batch_rows=self._plan.sql_batch_rows
        )
        wide = (
            self._read_parquet(shard.file, batch.wide, first, stop, typed=False, second=True)
            if batch.wide
            else None
        )
        outputs = sql.apply(
            read,
            wide,
            batch_rows=self._batch_rows,
            group_rows=self._plan.sql_batch_rows,
            # A local file rewritten in place with as many rows (and kept rows) plans the
            # same: its size and time tell the kept rows of the old file from the new one's.
            key=(self._plan.fingerprint, shard.file, first, self._local_identity(shard.file)),
        )
        try:
            yield from _rows(outputs, skip, hi - lo)
        finally:
            outputs.close()  # stops both decoders now, not when collected

    def _local_identity(self, file: int) -> tuple[int, int] | None:
        # Objects in a store are taken as immutable, as their footers are.
        path = self._plan.files[file]
        return None if is_remote(path) else local_footers.identity(path.removeprefix("file://"))

    def _file_rows(self, shard: Shard, lo: int, hi: int) -> tuple[int, int]:
        """The file rows holding the shard's rows ``lo..hi`` (deleted rows of a lake file
        are not the shard's: they lie between)."""
        deleted = self._deleted_rows(shard.file)
        if not len(deleted):
            return shard.start + lo, shard.start + hi
        inside = deleted[(deleted >= shard.start) & (deleted < shard.stop)]
        kept = np.setdiff1d(np.arange(shard.start, shard.stop, dtype=np.int64), inside, assume_unique=True)
        return int(kept[lo]), int(kept[hi - 1]) + 1

    def _yielding_rows(self, shard: Shard, lo: int, hi: int) -> tuple[int, int, int]:
        """The file rows to run through the query for its rows ``lo..hi`` of a shard, and
        how many it yields before row ``lo``: the row groups that yield those rows, where
        the plan counted what each yields; else the whole shard."""
        found = self._group_yields(shard.file)
        if found is None:
            return shard.start, shard.stop, lo
        starts, yielded = found
        base = int(yielded[np.searchsorted(starts, shard.start)])
        first = int(np.searchsorted(yielded, base + lo, side="right")) - 1
        stop = int(np.searchsorted(yielded, base + hi, side="left"))
        return int(starts[first]), int(starts[stop]), base + lo - int(yielded[first])

    def _group_yields(self, file: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Where each row group of ``file`` starts, and the rows yielded before it."""
        if self._plan.yields is None:
            return None
        if file not in self._yields:
            groups, yields = self._plan.row_groups[file], self._plan.yields[file]
            copy = self._copied.get(file)
            if copy is not None:  # read by the copy's row groups, whether made or not
                groups, yields = copy.rows, copy.counts
            if not groups:  # read by the catalog's scan
                return None
            starts = np.concatenate([[0], np.cumsum(groups, dtype=np.int64)])
            yielded = np.concatenate([[0], np.cumsum(yields, dtype=np.int64)])
            self._yields[file] = (starts, yielded)
        return self._yields[file]

    def _deleted_rows(self, file: int) -> np.ndarray:
        lake = self._plan.lake
        if lake is None:
            return _NONE_DELETED
        if not lake.deleted_rows(file):
            return _NONE_DELETED
        if file not in self._deleted:
            self._deleted[file] = all_deleted(
                lake.deletes[file], lake.inlined_deletes[file], self._plan.files[file], self._plan.s3
            )
        return self._deleted[file]

    def _read_parquet(
        self,
        file: int,
        columns: Iterable[str],
        first: int,
        stop: int,
        *,
        typed: bool = True,
        batch_rows: int | None = None,
        second: bool = False,
    ) -> Iterator[pa.RecordBatch]:
        """Rows ``first..stop`` of ``columns``; ``second`` reads through a handle of its own,
        for a second stream over the same rows.

        An object store that does not answer is waited out: the read starts again from the
        first row not yet handed on (see :mod:`duckstream.core.retry`).
        """
        path, groups = self._stored(file)
        columns = list(columns)
        stored = self._plan.lake.stored_names(file) if self._plan.lake is not None else {}
        deleted = self._deleted_rows(file)
        backoff = Backoff(self._plan.s3.retry_seconds)
        # Rows checked once are not checked again (see checked_rows), unless the local file
        # changed since (objects in a store are taken as immutable, as their footers are).
        identity = self._local_identity(file)
        checking = (self._plan.fingerprint, file, tuple(columns), identity)
        row = first
        while row < stop:
            try:
                parquet = self._parquet_file(path, 1 if second else 0)
                for piece in self._decode(
                    parquet,
                    groups,
                    [stored.get(c, c) for c in columns],
                    row,
                    stop,
                    batch_rows,
                    name=(path, identity),
                ):
                    if stored:
                        piece = piece.rename_columns(columns)
                    if not checked_rows.checked(checking, row, row + piece.num_rows):
                        _check_decoded(piece)
                        checked_rows.remember(checking, row, row + piece.num_rows)
                    for kept in _without(piece, row, deleted):
                        yield self._typed(kept) if typed else kept
                    row += piece.num_rows
                    backoff.progressed()
                return
            except (OSError, pa.ArrowException) as exc:
                if not (is_remote(path) and transient(exc)):
                    # Footers were read when planning; a damaged data page only shows here.
                    raise SourceError(
                        f"cannot read rows {first}..{stop - 1} of {path}: {redact(str(exc))}; "
                        "the file is damaged, or changed since the stream was planned"
                    ) from None
                self._forget(path)
                backoff.wait(exc, path)

    def _stored(self, file: int) -> tuple[str, Sequence[int]]:
        """Where file ``file``'s rows are read, and its row groups there: the file itself, or
        the local copy a shuffled read makes of it (on its first read)."""
        path = self._plan.files[file]
        copy = self._copied.get(file)
        groups = copy.rows if copy is not None else None
        if groups is not None and file not in self._copies:
            # A lake file's columns, under the names the file stores them by (as read below).
            stored = self._plan.lake.stored_names(file) if self._plan.lake is not None else {}
            columns = decoded_columns(self._plan.columns, self._plan.batch, self._plan.late)
            self._copies[file] = local_copy(
                path,
                lambda: self._parquet_file(path),
                [stored.get(c, c) for c in columns],
                groups,
                cache_directory(self._plan.cache_dir, make=False),
            )
        made = self._copies.get(file)
        if groups is None or made is None:
            return path, self._plan.row_groups[file]
        return made, groups

    def _decode(
        self,
        parquet: pq.ParquetFile,
        row_groups: Sequence[int],
        columns: list[str],
        first: int,
        stop: int,
        batch_rows: int | None,
        *,
        name: tuple[str, object] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Rows ``first..stop`` of the file's ``columns`` (as the file names them). Part of
        one small row group is sliced from the group decoded once for all the pieces read
        from inside it, where the reader shares them (see :mod:`duckstream.core.shared_groups`);
        ``name`` tells the file (its path and local identity) for that."""
        groups: list[int] = []
        offset = 0
        group_start = 0
        for index, rows in enumerate(row_groups):
            if group_start < stop and group_start + rows > first:
                if not groups:
                    offset = group_start
                groups.append(index)
            group_start += rows
        chunk = batch_rows or self._batch_rows
        if self._shared is not None and name is not None and len(groups) == 1:
            rows = row_groups[groups[0]]
            part = first > offset or stop < offset + rows
            if part and rows * self._plan.row_bytes <= SHARED_GROUP_BYTES:
                table = self._shared.table(
                    (*name, groups[0], tuple(columns)),
                    lambda: parquet.read_row_group(groups[0], columns=columns, use_threads=self._threads > 1),
                )
                return iter(table.slice(first - offset, stop - first).to_batches(max_chunksize=chunk))
        batches = parquet.iter_batches(
            batch_size=chunk,
            row_groups=groups,
            columns=columns,
            use_threads=self._threads > 1,
        )
        return _rows(batches, first - offset, stop - first)

    def _forget(self, path: str) -> None:
        """Drop every open handle on ``path``: after a failure the next try opens it anew."""
        self._parquet = {slot: held for slot, held in self._parquet.items() if held[0] != path}
        remote_files.forget(path)

    def _parquet_file(self, path: str, slot: int = 0) -> pq.ParquetFile:
        held = self._parquet.get(slot)
        if held is not None and held[0] == path:
            return held[1]
        other = self._parquet.get(1 - slot)
        # A second handle on the same file reuses the footer already parsed.
        metadata = other[1].metadata if other is not None and other[0] == path else None
        if is_remote(path):
            if self._filesystem is None:
                self._filesystem = pyarrow_s3(self._plan.s3)
            handle = remote_files.open_remote(path, self._filesystem)
            metadata = metadata or remote_files.footer(path)
        else:
            # A path would have pyarrow resolve its filesystem on every open.
            handle = pa.OSFile(path.removeprefix("file://"))
            metadata = metadata or local_footers.footer(path)
        # Coalesced range reads pay off on object stores; locally they only delay the first rows.
        # Local pages stream through a small buffer: read whole, a column chunk of a large row
        # group (80 MB of images at 8,192 rows) would set the peak memory.
        parquet = pq.ParquetFile(
            handle, metadata=metadata, pre_buffer=is_remote(path), buffer_size=_READ_BUFFER_BYTES
        )
        if not is_remote(path) and metadata is None:
            local_footers.remember(path, parquet.metadata)
        self._parquet[slot] = (path, parquet)
        return parquet

    # -- DuckDB ----------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            if self._connections is not None:
                con = self._connections.cursor()
            else:
                con = _database(self._plan, self._threads)
            lake = self._plan.lake
            # The view binds at creation: it must name a real file of the plan (an empty name
            # would glob the working directory).
            first_file = self._plan.files[0] if self._plan.files and lake is None else ""
            con.execute("SET VARIABLE duckstream_file = ?", [first_file])
            con.execute("SET VARIABLE duckstream_file_index = -1::BIGINT")
            con.execute("SET VARIABLE duckstream_first = 0")
            con.execute("SET VARIABLE duckstream_last = -1")
            con.execute(_SHARD_VIEW if lake is None else _LAKE_SHARD_VIEW.format(scan=lake.scan))
            self._con = con
        return self._con

    def _read_sql(self, shard: Shard, lo: int, hi: int) -> Iterator[pa.RecordBatch]:
        con = self._connection()
        query = self._plan.query or "SELECT * FROM source"
        # One output row per file row: narrow the file range itself. Otherwise (WHERE, UNNEST,
        # or a lake file, whose deleted rows leave gaps) run the row groups holding rows
        # lo..hi (the shard, unless the plan knows what each yields) and keep those.
        if self._plan.narrow and self._plan.lake is None:
            first, last, skip = shard.start + lo, shard.start + hi - 1, 0
        else:
            first, stop, skip = self._yielding_rows(shard, lo, hi)
            last = stop - 1
        want = hi - lo
        path = self._plan.files[shard.file]
        backoff = Backoff(self._plan.s3.retry_seconds)
        # A store that stops answering is waited out; the query then runs again and hands on
        # from the first row not yet handed on (its order is the same on every run).
        handed = 0
        while True:
            try:
                if self._plan.lake is not None:
                    file_index = int(self._plan.lake.file_indexes[shard.file])
                    con.execute(f"SET VARIABLE duckstream_file_index = {file_index}::BIGINT")
                else:
                    con.execute("SET VARIABLE duckstream_file = ?", [path])
                con.execute(f"SET VARIABLE duckstream_first = {int(first)}")
                con.execute(f"SET VARIABLE duckstream_last = {int(last)}")
                reader = con.sql(query).to_arrow_reader(self._batch_rows)
                for piece in _rows(reader, skip + handed, want - handed):
                    yield self._typed(piece)
                    handed += piece.num_rows
                    backoff.progressed()
                return
            except (duckdb.Error, OSError, pa.ArrowException) as exc:
                if not (is_remote(path) and transient(exc)):
                    if isinstance(exc, duckdb.Error):
                        raise engine.query_error(exc, query, s3=self._plan.s3) from None
                    raise
                backoff.wait(exc, path)


def _database(plan: StreamPlan, threads: int) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that reads ``plan``'s files: the extensions they need, and a lake
    table's catalog attached."""
    lake = plan.lake
    extensions: list[str] = []
    if lake is not None or plan.remote:
        extensions.append("httpfs")
    if lake is not None:
        extensions += ["ducklake", "postgres_scanner"] if lake.postgres else ["ducklake"]
    con = engine.connect(
        s3=plan.s3,
        extensions=extensions,
        threads=threads,
        # One pass over each file: caching it only costs memory.
        config={"enable_external_file_cache": False},
    )
    if lake is not None:
        try:
            con.execute(lake.attach)
        except duckdb.Error as exc:
            con.close()
            raise engine.query_error(exc, lake.attach, s3=plan.s3) from None
    return con


def _check_decoded(batch: pa.RecordBatch) -> None:
    """Raise ``ArrowInvalid`` naming the column when decoded values are malformed.

    pyarrow does not check what it decodes from Parquet: a damaged page can give strings that
    are not UTF-8, which would fail later, far from the file, as a UnicodeDecodeError.
    """
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise pa.ArrowInvalid(f"column {name!r}: {exc}") from None


def _without(batch: pa.RecordBatch, first: int, deleted: np.ndarray) -> Iterator[pa.RecordBatch]:
    """``batch`` (file rows ``first..``) less the ``deleted`` rows, as zero-copy slices."""
    if not len(deleted):
        yield batch
        return
    lo, hi = np.searchsorted(deleted, [first, first + batch.num_rows])
    if hi - lo > _MAX_DELETED_RUNS:
        # Dense deletes: one filtered copy beats many tiny slices.
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[deleted[lo:hi] - first] = False
        yield batch.filter(pa.array(keep))
        return
    start = 0
    for position in deleted[lo:hi]:
        end = int(position) - first
        if end > start:
            yield batch.slice(start, end - start)
        start = end + 1
    if start < batch.num_rows:
        yield batch.slice(start)


def _rows(batches: Iterable[pa.RecordBatch], skip: int, want: int) -> Iterator[pa.RecordBatch]:
    """Rows ``skip`` to ``skip + want`` of a stream of batches, as zero-copy slices."""
    for batch in batches:
        if want <= 0:
            return
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        piece = batch.slice(skip, want)
        skip = 0
        want -= piece.num_rows
        yield piece
