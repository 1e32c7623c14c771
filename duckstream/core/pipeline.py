"""The stream: plan (parent) -> epoch order -> partition -> read -> shuffle -> batches.

:func:`prepare` runs once in the main process and makes a picklable :class:`StreamPlan`
(metadata reads, SQL checks, row counts, and for non-row-local SQL the global result).
:func:`read_slot` runs in each worker and streams that worker's share of one epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from duckstream import engine
from duckstream.core import sql as sqlmod
from duckstream.core.lake import LakeTable
from duckstream.core.order import epoch_order
from duckstream.core.partition import Even, partition
from duckstream.core.plan import DEFAULT_SHARD_ROWS, Shard, plan_fingerprint, plan_shards
from duckstream.core.ranges import slice_ranges
from duckstream.core.reader import ShardReader, default_threads
from duckstream.core.resume import (
    Stage,
    continuation,
    rows_emitted,
    stage_sequence,
    window_key,
)
from duckstream.core.shuffle import window_permutation
from duckstream.core.source import (
    SourceLike,
    check_schemas,
    is_remote,
    list_files,
    parquet_patterns,
    read_metadata,
)
from duckstream.core.world import World
from duckstream.errors import CatalogError, ConfigurationError
from duckstream.redact import redact
from duckstream.storage import S3Settings

__all__ = [
    "LakeAccess",
    "Source",
    "StreamPlan",
    "prepare",
    "read_slot",
    "rebatch",
    "shuffled_batches",
    "windows",
]

_RESULT_ROW_GROUP = 8_192

# What a stream reads: Parquet files (paths, globs, URIs, lists) or a pinned lake table.
Source = SourceLike | LakeTable


@dataclass(frozen=True)
class StreamPlan:
    """Everything a worker needs to read its share; plain, picklable data."""

    files: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]
    shards: tuple[Shard, ...]
    counts: tuple[int, ...]  # rows each shard yields after the SQL
    query: str | None  # SQL per shard over `source`; None reads the columns below
    narrow: bool  # output row k of a shard is its row start+k: ranges narrow the read itself
    columns: tuple[str, ...] | None  # plain projection: read with pyarrow
    schema: pa.Schema
    s3: S3Settings
    fingerprint: str
    lake: LakeAccess | None = None  # set when the rows come from a pinned DuckLake table
    row_bytes: int = 256  # average uncompressed bytes of a source row, for sizing buffers

    @property
    def num_rows(self) -> int:
        return sum(self.counts)


def prepare(
    source: Source,
    sql: str | None = None,
    *,
    s3: S3Settings,
    cache_dir: str | os.PathLike[str] | None = None,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    original_schema: pa.Schema | None = None,
) -> StreamPlan:
    """Plan a stream over ``source`` through ``sql``; raises here, before any worker starts.

    ``source`` is Parquet (paths, globs, URIs) or a pinned :class:`LakeTable`.

    ``original_schema`` is the schema of the data a materialised result was computed from,
    whose fixed-size lists the result gets back.
    """
    if isinstance(source, LakeTable):
        return _prepare_lake(source, sql, cache_dir=cache_dir, shard_rows=shard_rows)
    patterns = parquet_patterns(source)
    spellings = [os.fspath(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    remote = any(is_remote(p) for p in patterns)
    con = engine.connect(s3=s3, extensions=("httpfs",) if remote else ())
    try:
        files = list_files(patterns, con)
        metas = read_metadata(files, s3)
        source_schema = check_schemas(metas)
        listed = ", ".join(engine.sql_literal(f) for f in files)
        con.execute(f"CREATE VIEW source AS SELECT * FROM read_parquet([{listed}])")
        query = sqlmod.name_the_source(sql, [*spellings, *patterns]) if sql else None
        shape = (
            sqlmod.analyse(con, query, source_schema.names)
            if query
            else sqlmod.QueryShape(True, True, tuple(source_schema.names), False)
        )
        if not shape.row_local:
            assert query is not None
            result = _materialise(con, query, files, metas, shape.ordered, cache_dir)
            return prepare(
                result,
                None,
                s3=s3,
                cache_dir=cache_dir,
                shard_rows=shard_rows,
                original_schema=source_schema,
            )
        shards = plan_shards([m.row_groups for m in metas], target_rows=shard_rows)
        if shape.columns is not None:
            schema = pa.schema([source_schema.field(c) for c in shape.columns])
        else:
            assert query is not None
            schema = _result_schema(con, query)
        schema = _restore_fixed_size(schema, original_schema or source_schema)
        if shape.keeps_rows:
            counts = [s.rows for s in shards]
        else:
            assert query is not None
            counts = _count_rows(con, query, [_parquet_shard(files, s) for s in shards])
    finally:
        con.close()
    return StreamPlan(
        files=tuple(files),
        row_groups=tuple(m.row_groups for m in metas),
        shards=tuple(shards),
        counts=tuple(counts),
        query=None if shape.columns is not None else query,
        narrow=shape.keeps_rows,
        columns=shape.columns,
        schema=schema,
        s3=s3,
        fingerprint=plan_fingerprint(files, shards, counts, query),
        row_bytes=max(1, sum(m.data_bytes for m in metas) // max(1, sum(m.rows for m in metas))),
    )


def _result_schema(con: duckdb.DuckDBPyConnection, query: str) -> pa.Schema:
    try:
        return con.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
    except duckdb.Error as exc:
        raise engine.query_error(exc, query) from None


def _restore_fixed_size(schema: pa.Schema, source: pa.Schema) -> pa.Schema:
    """Parquet has no fixed-size list and DuckDB reads one back as a list: restore the type of
    source columns that pass through unchanged, so they still become ``(n, k)`` tensors."""
    fields = []
    for column in schema:
        original = source.field(column.name).type if column.name in source.names else None
        if (
            original is not None
            and pa.types.is_fixed_size_list(original)
            and pa.types.is_list(column.type)
            and column.type.value_type == original.value_type
        ):
            column = column.with_type(original)
        fields.append(column)
    return pa.schema(fields)


def _parquet_shard(files: Sequence[str], shard: Shard) -> str:
    return (
        "SELECT * EXCLUDE (file_row_number) FROM read_parquet("
        f"{engine.sql_literal(files[shard.file])}, file_row_number = true) "
        f"WHERE file_row_number BETWEEN {shard.start} AND {shard.stop - 1}"
    )


def _count_rows(con: duckdb.DuckDBPyConnection, query: str, shard_views: Sequence[str]) -> list[int]:
    """Rows each shard yields through ``query`` (it filters or unnests, so metadata cannot say)."""

    def count(view: str) -> int:
        cursor = con.cursor()
        try:
            cursor.execute(f"CREATE TEMP VIEW source AS {view}")
            row = cursor.execute(f"SELECT count(*) FROM ({query})").fetchone()
            return int(row[0]) if row else 0
        except duckdb.Error as exc:
            raise engine.query_error(exc, query) from None
        finally:
            cursor.close()

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(count, shard_views))


def _materialise(
    con: duckdb.DuckDBPyConnection,
    query: str,
    files: Sequence[str],
    metas: Sequence[object],
    ordered: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> str:
    """Run a whole-source query once into a local Parquet file, reused while inputs are equal.

    Without an ORDER BY of its own the result is sorted by every column: a GROUP BY's output
    order varies between runs, and every rank must see the same rows in the same order.
    """
    key = hashlib.sha256(
        json.dumps([query, list(files), [repr(m) for m in metas]], default=str).encode()
    ).hexdigest()[:24]
    directory = _cache_directory(cache_dir)
    target = directory / f"result-{key}.parquet"
    if target.exists():
        return str(target)
    partial = directory / f".result-{key}-{os.getpid()}.parquet"
    body = query if ordered else f"SELECT * FROM ({query}) ORDER BY ALL"
    try:
        con.execute(
            f"COPY ({body}) TO {engine.sql_literal(str(partial))} "
            f"(FORMAT parquet, ROW_GROUP_SIZE {_RESULT_ROW_GROUP})"
        )
    except duckdb.Error as exc:
        partial.unlink(missing_ok=True)
        raise engine.query_error(exc, query) from None
    os.replace(partial, target)  # atomic: ranks racing on one node all see a whole file
    return str(target)


# ------------------------------------------------------------------------------ lake tables


@dataclass(frozen=True)
class LakeAccess:
    """How a worker reads a pinned lake table: attach the catalog read-only, scan at a snapshot."""

    attach: str = field(repr=False)  # may hold a PostgreSQL password
    scan: str
    postgres: bool


def _prepare_lake(
    table: LakeTable,
    sql: str | None,
    *,
    cache_dir: str | os.PathLike[str] | None,
    shard_rows: int,
) -> StreamPlan:
    """Plan a pinned DuckLake table: shards are row ranges of its data files (and inlined rows)
    as the catalog lists them at the snapshot, with deletes and later writes already excluded."""
    owned = table.catalog is None or table.catalog._con is None
    if owned:
        con = engine.connect(s3=table.s3, extensions=engine.ALL_EXTENSIONS)
        try:
            con.execute(table.location.attach_sql(table.alias, read_only=True))
        except duckdb.Error as exc:
            con.close()
            raise engine.query_error(exc, table.location.attach_sql(table.alias, read_only=True)) from None
    else:
        con = table.catalog.con.cursor()
    try:
        try:
            con.execute(f"CREATE OR REPLACE TEMP VIEW source AS SELECT * FROM {table.scan}")
            layout = con.execute(
                f"SELECT filename, file_row_number // {int(shard_rows)} AS chunk, count(*), "
                f"min(file_row_number), max(file_row_number) FROM {table.scan} "
                "GROUP BY ALL ORDER BY filename, chunk"
            ).fetchall()
        except duckdb.Error as exc:
            raise _lake_error(exc, table) from None
        files = list(dict.fromkeys(row[0] for row in layout))
        _check_files_exist(files, table)
        index = {name: i for i, name in enumerate(files)}
        shards = [Shard(index[name], int(lo), int(hi) + 1) for name, _, _, lo, hi in layout]
        visible = [int(row[2]) for row in layout]
        source_schema = _result_schema(con, "SELECT * FROM source")
        query = sqlmod.name_the_source(sql, [table.name]) if sql else None
        shape = (
            sqlmod.analyse(con, query, source_schema.names)
            if query
            else sqlmod.QueryShape(True, True, None, False)
        )
        if not shape.row_local:
            assert query is not None
            key_parts: list[object] = [repr(table), layout]
            result = _materialise(con, query, files, key_parts, shape.ordered, cache_dir)
            return prepare(result, None, s3=table.s3, cache_dir=cache_dir, original_schema=source_schema)
        schema = _result_schema(con, query or "SELECT * FROM source")
        if shape.keeps_rows:
            counts = visible
        else:
            assert query is not None
            counts = _count_rows(con, query, [_lake_shard(table.scan, files, s) for s in shards])
        attach = _worker_attach(con, table, cache_dir)
    finally:
        con.close()
    return StreamPlan(
        files=tuple(files),
        row_groups=(),
        shards=tuple(shards),
        counts=tuple(counts),
        query=query,
        narrow=False,  # deleted rows leave gaps in row numbers: a shard's k-th row is found by reading
        columns=None,
        schema=schema,
        s3=table.s3,
        fingerprint=plan_fingerprint(files, shards, counts, f"{table.scan}|{query}"),
        lake=LakeAccess(attach=attach, scan=table.scan, postgres=table.location.kind == "postgres"),
    )


def _lake_shard(scan: str, files: Sequence[str], shard: Shard) -> str:
    return (
        f"SELECT * FROM {scan} WHERE filename = {engine.sql_literal(files[shard.file])} "
        f"AND file_row_number BETWEEN {shard.start} AND {shard.stop - 1}"
    )


def _lake_error(exc: duckdb.Error, table: LakeTable) -> Exception:
    text = str(exc)
    if "snapshot" in text.lower():
        return CatalogError(
            f"snapshot {table.version} of table {table.name!r} is gone (expired?): "
            f"{redact(text).splitlines()[0]}"
        )
    if (
        any(m in text for m in ("No such file", "not found", "HTTP 404", "does not exist"))
        and "Table" not in text
    ):
        return CatalogError(
            f"snapshot {table.version} of table {table.name!r} refers to data files that no longer "
            f"exist (expired or cleaned up): {redact(text).splitlines()[0]}"
        )
    return engine.query_error(exc, f"SELECT * FROM {table.scan}", s3=table.s3)


def _check_files_exist(files: Sequence[str], table: LakeTable) -> None:
    """Local data files of the snapshot must still be there (remote ones fail when read)."""
    for name in files:
        if name.startswith("ducklake_inlined_data") or "://" in name:
            continue
        if not os.path.exists(name):
            raise CatalogError(
                f"snapshot {table.version} of table {table.name!r} refers to {name}, which no "
                "longer exists (expired or cleaned up): pin a newer snapshot"
            )


def _worker_attach(
    con: duckdb.DuckDBPyConnection, table: LakeTable, cache_dir: str | os.PathLike[str] | None
) -> str:
    """The ATTACH a worker runs: PostgreSQL read-only, or a copy of a file catalog.

    A DuckDB catalog file admits one writing process and no readers beside it, and the
    training process may hold it open: workers read a copy of its metadata instead, which is
    consistent and, for a pinned snapshot, complete.
    """
    if table.location.kind == "postgres":
        return table.location.attach_sql(table.alias, read_only=True)
    directory = _cache_directory(cache_dir)
    key = hashlib.sha256(f"{table.location.target}|{table.version}".encode()).hexdigest()[:24]
    copy = directory / f"catalog-{key}.duckdb"
    if not copy.exists():
        partial = directory / f".catalog-{key}-{os.getpid()}.duckdb"
        alias = f"duckstream_copy_{os.getpid()}"
        try:
            con.execute(f"ATTACH {engine.sql_literal(str(partial))} AS {alias}")
            con.execute(f"COPY FROM DATABASE __ducklake_metadata_{table.alias} TO {alias}")
            con.execute(f"DETACH {alias}")
        except duckdb.Error as exc:
            partial.unlink(missing_ok=True)
            raise engine.query_error(exc, "COPY FROM DATABASE (catalog metadata)") from None
        os.replace(partial, copy)
    return table.location.attach_sql(table.alias, read_only=True, target=str(copy))


def _cache_directory(cache_dir: str | os.PathLike[str] | None) -> Path:
    directory = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "duckstream-cache"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


# ------------------------------------------------------------------------------ worker side


def read_slot(
    plan: StreamPlan,
    *,
    world: World,
    seed: int,
    epoch: int,
    shuffle: bool,
    even: Even,
    done: Sequence[Stage],
    shuffle_buffer: int,
    batch_size: int,
    drop_last: bool,
    item_rows: int | None = None,
    threads: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """This slot's share of ``epoch`` after the stages ``done``, in batches of ``batch_size``.

    ``item_rows`` is the rows per item the training loop counts (1 for rows; defaults to
    ``batch_size``). When the last stage in ``done`` had this very setup, the read continues
    it exactly where it stopped, as if never interrupted; otherwise the rows still owed are
    partitioned afresh.
    """
    current = Stage(world.world_size, world.num_workers, item_rows or batch_size, drop_last, shuffle_buffer)
    continuing = bool(done) and done[-1].same_setup(current)
    prior = done[:-1] if continuing else done
    sequence = stage_sequence(plan.num_rows, prior, seed=seed, epoch=epoch, shuffle=shuffle, even=even)
    if continuing:
        world = continuation(sequence, done[-1], world, even)
    span = partition(sequence, world, even)
    emitted = rows_emitted(sequence, done[-1], world, even) if continuing else 0
    first_window, inside = divmod(emitted, shuffle_buffer) if shuffle else (0, 0)
    start = first_window * shuffle_buffer if shuffle else emitted
    order = epoch_order(len(plan.shards), seed=seed, epoch=epoch, shuffle=shuffle)
    reader = ShardReader(plan, threads=threads or default_threads(world.num_workers))
    try:
        batches: Iterable[pa.RecordBatch] = (
            batch
            for shard, lo, hi in _pieces(slice_ranges(span.ranges, start, span.rows), order, plan.counts)
            for batch in reader.read(plan.shards[shard], lo, hi)
        )
        if not shuffle:
            yield from rebatch(batches, batch_size, drop_last)
            return
        yield from shuffled_batches(
            batches,
            buffer=shuffle_buffer,
            key=window_key(seed, epoch, len(prior), world),
            first_window=first_window,
            skip=inside,
            batch_size=batch_size,
            drop_last=drop_last,
            schema=plan.schema,
        )
    finally:
        reader.close()


def _pieces(ranges: np.ndarray, order: np.ndarray, counts: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """Epoch positions (ranges) as ``(shard, lo, hi)`` row ranges of shards, in order."""
    sizes = np.asarray(counts, dtype=np.int64)[order]
    ends = np.cumsum(sizes)
    pending: tuple[int, int, int] | None = None
    for start, stop in ranges:
        index = int(np.searchsorted(ends, start, side="right"))
        position = int(start)
        while position < stop:
            begin = int(ends[index] - sizes[index])
            lo, hi = position - begin, min(int(stop), int(ends[index])) - begin
            shard = int(order[index])
            if pending is not None and pending[0] == shard and pending[2] == lo:
                pending = (shard, pending[1], hi)
            else:
                if pending is not None:
                    yield pending
                pending = (shard, lo, hi)
            position = begin + hi
            index += 1
    if pending is not None:
        yield pending


def windows(batches: Iterable[pa.RecordBatch], buffer: int, schema: pa.Schema) -> Iterator[pa.Table]:
    """Consecutive windows of ``buffer`` rows (the last one shorter), without copying."""
    held: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        while batch.num_rows:
            take = min(buffer - rows, batch.num_rows)
            held.append(batch.slice(0, take))
            rows += take
            batch = batch.slice(take)
            if rows == buffer:
                yield pa.Table.from_batches(held, schema=schema)
                held, rows = [], 0
    if rows:
        yield pa.Table.from_batches(held, schema=schema)


def shuffled_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    buffer: int,
    key: tuple[int, ...],
    first_window: int,
    skip: int,
    batch_size: int,
    drop_last: bool,
    schema: pa.Schema,
) -> Iterator[pa.RecordBatch]:
    """Batches of the stream with each window of ``buffer`` rows permuted.

    Each output batch is gathered straight from its window (one copy); the first ``skip``
    rows of the first window's permuted order are left out (a resumed read).
    """
    carry: pa.RecordBatch | None = None
    for index, pieces in enumerate(windows(batches, buffer, schema), start=first_window):
        # One contiguous copy per window: take() on a many-chunk table would concatenate the
        # chunks again for every batch gathered from it.
        window = pieces.combine_chunks()
        order = window_permutation(window.num_rows, key, index, True)[skip:]
        skip = 0
        position = 0
        if carry is not None:
            need = batch_size - carry.num_rows
            carry = pa.concat_batches([carry, _gather(window, order[:need], schema)])
            position = need
            if carry.num_rows < batch_size:
                continue
            yield carry
            carry = None
        while len(order) - position >= batch_size:
            yield _gather(window, order[position : position + batch_size], schema)
            position += batch_size
        if position < len(order):
            carry = _gather(window, order[position:], schema)
    if carry is not None and carry.num_rows and not drop_last:
        yield carry


def _gather(window: pa.Table, rows: np.ndarray, schema: pa.Schema) -> pa.RecordBatch:
    taken = window.take(rows).combine_chunks().to_batches()
    return taken[0] if taken else pa.RecordBatch.from_pylist([], schema=schema)


def rebatch(batches: Iterable[pa.RecordBatch], size: int, drop_last: bool) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows; the last one short unless dropped.

    Batches inside one read batch are zero-copy slices; only a batch that straddles two read
    batches is copied.
    """
    if size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, found {size}")
    carry: pa.RecordBatch | None = None
    for batch in batches:
        if carry is not None:
            head = batch.slice(0, size - carry.num_rows)
            carry = pa.concat_batches([carry, head])
            batch = batch.slice(head.num_rows)
            if carry.num_rows < size:
                continue
            yield carry
            carry = None
        full = batch.num_rows // size
        for index in range(full):
            yield batch.slice(index * size, size)
        if batch.num_rows > full * size:
            carry = batch.slice(full * size)
    if carry is not None and not drop_last:
        yield carry
