"""Planning, in the main process: a source and its SQL become a picklable StreamPlan.

Metadata reads, SQL checks, per-shard row counts, and for SQL that needs the whole source its
result, computed once. Errors in the source or the SQL surface here, before workers start.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from duckstream import engine
from duckstream.core import sql as sqlmod
from duckstream.core.batch_sql import BatchQuery, output_schema, split_query
from duckstream.core.counting import FILE, ROW, count_per_range, counting_query
from duckstream.core.lake import LakeTable
from duckstream.core.lake_files import DirectFile, deleted_positions, direct_files
from duckstream.core.plan import (
    DEFAULT_SHARD_ROWS,
    Shard,
    plan_fingerprint,
    plan_shards,
    skip_empty_groups,
)
from duckstream.core.source import (
    FileMeta,
    SourceLike,
    check_schemas,
    is_remote,
    list_files,
    parquet_patterns,
    read_metadata,
)
from duckstream.errors import CatalogError
from duckstream.redact import redact
from duckstream.storage import S3Settings

__all__ = ["LakeAccess", "Source", "StreamPlan", "prepare"]

_RESULT_ROW_GROUP = 8_192
_SQL_BATCH_BYTES = 16 * 1024 * 1024
_SQL_BATCH_MAX_ROWS = 65_536

# What a stream reads: Parquet files (paths, globs, URIs, lists) or a pinned lake table.
Source = SourceLike | LakeTable


@dataclass(frozen=True)
class StreamPlan:
    """Everything a worker needs to read its share; plain, picklable data."""

    files: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]
    shards: tuple[Shard, ...]
    counts: tuple[int, ...]  # rows each shard yields after the SQL
    query: str | None  # the SQL over `source`; None reads the columns below
    narrow: bool  # output row k of a shard is its row start+k: ranges narrow the read itself
    columns: tuple[str, ...] | None  # plain projection: read with pyarrow
    schema: pa.Schema
    s3: S3Settings
    fingerprint: str
    lake: LakeAccess | None = None  # set when the rows come from a pinned DuckLake table
    row_bytes: int = 256  # average uncompressed bytes of a source row, for sizing buffers
    # The query as DuckDB runs it over batches pyarrow decoded; None runs it per shard in DuckDB.
    batch: BatchQuery | None = None
    sql_batch_rows: int = _SQL_BATCH_MAX_ROWS  # rows of the columns DuckDB reads, at once

    @property
    def num_rows(self) -> int:
        return sum(self.counts)

    def decoded(self, file: int) -> bool:
        """Whether pyarrow decodes file ``file`` (else DuckDB reads it, one shard at a time)."""
        if self.columns is None and self.batch is None:
            return False
        return self.lake is None or self.lake.direct[file]

    @property
    def decodes(self) -> bool:
        """Whether pyarrow decodes every file."""
        return all(self.decoded(file) for file in range(len(self.files)))

    @property
    def remote(self) -> bool:
        """Whether any data file lies in an object store."""
        return any(is_remote(path) for path in self.files)


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
        row_groups = [m.row_groups for m in metas]
        shards = plan_shards(row_groups, target_rows=shard_rows)
        batch: BatchQuery | None = None
        if shape.columns is not None:
            schema = pa.schema([source_schema.field(c) for c in shape.columns])
        else:
            assert query is not None
            batch, schema = _batch_query(con, query, source_schema, shape.keeps_rows)
        schema = _restore_fixed_size(schema, original_schema or source_schema)
        if shape.keeps_rows:
            counts = [s.rows for s in shards]
        else:
            assert query is not None
            shards, counts = _count_filtered(con, query, files, row_groups, shard_rows)
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
        row_bytes=_row_bytes(metas),
        batch=batch,
        sql_batch_rows=_sql_batch_rows(metas, batch),
    )


def _batch_query(
    con: duckdb.DuckDBPyConnection, query: str, source_schema: pa.Schema, keeps_rows: bool
) -> tuple[BatchQuery | None, pa.Schema]:
    """The query split to run over pyarrow's batches, and its output schema.

    Where DuckDB cannot take the decoded columns as Arrow (a type it does not know), the query
    runs per shard in DuckDB instead, reading the files itself.
    """
    try:
        batch = split_query(con, query, source_schema, keeps_rows=keeps_rows)
        return batch, output_schema(query, batch, source_schema)
    except (duckdb.Error, pa.ArrowException):
        return None, _result_schema(con, query)


def _count_filtered(
    con: duckdb.DuckDBPyConnection,
    query: str,
    files: Sequence[str],
    row_groups: Sequence[Sequence[int]],
    shard_rows: int,
) -> tuple[list[Shard], list[int]]:
    """Shards and the rows each yields through a filtering query, counted in one pass.

    Row groups that yield nothing are left out of the plan, so they are never read.
    """
    reduced = counting_query(con, query)
    if reduced is None:
        shards = plan_shards(row_groups, target_rows=shard_rows)
        return shards, _count_rows(con, query, [_parquet_shard(files, s) for s in shards])
    keys: list[str] = []
    starts: list[int] = []
    for path, groups in zip(files, row_groups, strict=True):
        offsets = [0, *itertools.accumulate(groups)][:-1]
        keys.extend([path] * len(groups))
        starts.extend(offsets)
    listed = ", ".join(engine.sql_literal(f) for f in files)
    tagged = (
        f"SELECT * RENAME (file_row_number AS {ROW}) "
        f"FROM read_parquet([{listed}], filename = '{FILE}', file_row_number = true)"
    )
    found = count_per_range(con, tagged, reduced, keys, starts)
    per_file: list[list[int]] = []
    position = 0
    for groups in row_groups:
        per_file.append([int(c) for c in found[position : position + len(groups)]])
        position += len(groups)
    return skip_empty_groups(row_groups, per_file, target_rows=shard_rows)


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
    # DuckLake's `file_index` of each planned file, which workers filter on: unlike the
    # virtual `filename` column, a user column cannot hide it (COCO tables have a `filename`).
    file_indexes: tuple[int, ...] = ()
    # Per planned file: read straight from Parquet (see core.lake_files), its delete file, and
    # the names it stores table columns under where they differ.
    direct: tuple[bool, ...] = ()
    deletes: tuple[str | None, ...] = ()
    renames: tuple[tuple[tuple[str, str], ...], ...] = ()

    def stored_names(self, file: int) -> dict[str, str]:
        """table column -> the name file ``file`` stores it under, where they differ."""
        return dict(self.renames[file]) if self.renames else {}


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
            source_schema = _result_schema(con, "SELECT * FROM source")
            # A user column called `filename` hides DuckLake's virtual one: then files go by
            # their index alone.
            name = "NULL" if "filename" in source_schema.names else "any_value(filename)"
            layout = con.execute(
                f"SELECT file_index, file_row_number // {int(shard_rows)} AS chunk, count(*), "
                f"min(file_row_number), max(file_row_number), {name} FROM {table.scan} "
                "GROUP BY file_index, chunk ORDER BY file_index, chunk"
            ).fetchall()
        except duckdb.Error as exc:
            raise _lake_error(exc, table) from None
        names = {int(row[0]): row[5] for row in layout}
        file_indexes = list(names)
        files = [names[i] or f"{table.name} file {i}" for i in file_indexes]
        _check_files_exist([n for n in names.values() if n is not None], table)
        query = sqlmod.name_the_source(sql, [table.name]) if sql else None
        shape = (
            sqlmod.analyse(con, query, source_schema.names)
            if query
            else sqlmod.QueryShape(True, True, tuple(source_schema.names), False)
        )
        if not shape.row_local:
            assert query is not None
            key_parts: list[object] = [repr(table), layout]
            result = _materialise(con, query, files, key_parts, shape.ordered, cache_dir)
            return prepare(result, None, s3=table.s3, cache_dir=cache_dir, original_schema=source_schema)
        try:
            layout_files = _direct_layout(con, table, source_schema, layout, file_indexes)
        except duckdb.Error as exc:
            raise _lake_error(exc, table) from None
        direct = [d[0] if d is not None else None for d in layout_files]
        files = [d.meta.path if d is not None else f for d, f in zip(direct, files, strict=True)]
        schema = _result_schema(con, query or "SELECT * FROM source")
        batch: BatchQuery | None = None
        if shape.columns is None:
            assert query is not None
            batch, _ = _batch_query(con, query, source_schema, shape.keeps_rows)
            if batch is not None:
                schema = output_schema(query, batch, source_schema)
        shards, counts = _lake_shards(
            con, table, query, shape.keeps_rows, layout, layout_files, file_indexes, shard_rows
        )
        attach = _worker_attach(con, table, cache_dir)
    finally:
        con.close()
    decodes = shape.columns is not None or batch is not None
    return StreamPlan(
        files=tuple(files),
        row_groups=tuple(d.meta.row_groups if d is not None else () for d in direct),
        shards=tuple(shards),
        counts=tuple(counts),
        query=query,
        narrow=shape.keeps_rows,  # for the files pyarrow reads; the catalog's scan always skips
        columns=shape.columns,
        schema=schema,
        s3=table.s3,
        fingerprint=plan_fingerprint(files, shards, counts, f"{table.scan}|{query}"),
        lake=LakeAccess(
            attach=attach,
            scan=table.scan,
            postgres=table.location.kind == "postgres",
            file_indexes=tuple(file_indexes),
            direct=tuple(decodes and d is not None for d in direct),
            deletes=tuple(d.delete_file if d is not None else None for d in direct),
            renames=tuple(d.renames if d is not None else () for d in direct),
        ),
        row_bytes=_row_bytes([d.meta for d in direct if d is not None]),
        batch=batch,
        sql_batch_rows=_sql_batch_rows([d.meta for d in direct if d is not None], batch),
    )


def _row_bytes(metas: Sequence[FileMeta], columns: Sequence[str] | None = None) -> int:
    """Average uncompressed bytes of a row, or of ``columns`` of it (256 when no footer says)."""
    rows = sum(m.rows for m in metas)
    if not rows:
        return 256
    if columns is None:
        return max(1, sum(m.data_bytes for m in metas) // rows)
    wanted = set(columns)
    size = sum(n for m in metas for name, n in m.column_bytes if name in wanted)
    return max(1, size // rows)


def _sql_batch_rows(metas: Sequence[FileMeta], batch: BatchQuery | None) -> int:
    """Rows DuckDB takes at once: about 16 MiB of the columns it reads, 1,024 to 65,536 rows.

    Large batches amortise DuckDB's fixed cost per query; the bound keeps a query that reads
    wide values (``octet_length(image)``) from holding a row group of them at once.
    """
    if batch is None:
        return _SQL_BATCH_MAX_ROWS
    per_row = _row_bytes(metas, batch.reads)
    return max(1_024, min(_SQL_BATCH_MAX_ROWS, _SQL_BATCH_BYTES // per_row))


def _direct_layout(
    con: duckdb.DuckDBPyConnection,
    table: LakeTable,
    schema: pa.Schema,
    layout: Sequence[tuple[Any, ...]],
    file_indexes: Sequence[int],
) -> list[tuple[DirectFile, np.ndarray] | None]:
    """For each planned file, how pyarrow reads it (None: through the catalog's scan).

    DuckLake numbers a snapshot's files (``file_index``) in the order it lists them; a file
    is read directly only when its rows as the catalog sees them are the ones the footer
    and the delete file account for, so a mismatch falls back to the catalog, never misreads.
    """
    listed = direct_files(con, table, schema)
    visible: dict[int, int] = {}
    named: dict[int, str | None] = {}
    for row in layout:
        visible[int(row[0])] = visible.get(int(row[0]), 0) + int(row[2])
        named[int(row[0])] = row[5]
    found: list[tuple[DirectFile, np.ndarray] | None] = []
    for file_index in file_indexes:
        candidate = listed[file_index] if file_index < len(listed) else None
        if candidate is None or named[file_index] not in (None, candidate.meta.path):
            found.append(None)
            continue
        deleted = (
            deleted_positions(candidate.delete_file, candidate.meta.path, table.s3)
            if candidate.delete_file
            else np.empty(0, dtype=np.int64)
        )
        ok = candidate.meta.rows - len(deleted) == visible[file_index]
        found.append((candidate, deleted) if ok else None)
    return found


def _lake_shards(
    con: duckdb.DuckDBPyConnection,
    table: LakeTable,
    query: str | None,
    keeps_rows: bool,
    layout: Sequence[tuple[Any, ...]],
    direct: Sequence[tuple[DirectFile, np.ndarray] | None],
    file_indexes: Sequence[int],
    shard_rows: int,
) -> tuple[list[Shard], list[int]]:
    """Shards of the lake's files and the rows each yields.

    A file read directly is cut by its row groups (a decoder cannot start inside one); one
    read by the catalog's scan by ``shard_rows`` of its row numbers. A filtering query is
    counted in one pass over the catalog's scan, and the row groups it leaves empty are
    never read.
    """
    index = {file_index: i for i, file_index in enumerate(file_indexes)}
    chunks: dict[int, list[tuple[int, int, int]]] = {}
    for row in layout:
        chunks.setdefault(index[int(row[0])], []).append((int(row[3]), int(row[4]) + 1, int(row[2])))
    # Candidate pieces per file, in order: (start, stop, rows visible before any filter).
    pieces: list[list[tuple[int, int, int]]] = []
    for file, found in enumerate(direct):
        if found is None:
            pieces.append(chunks[file])
            continue
        groups = found[0].meta.row_groups
        deleted = found[1]
        starts = np.concatenate(([0], np.cumsum(groups, dtype=np.int64)))
        gone = np.searchsorted(deleted, starts)
        pieces.append(
            [
                (int(starts[g]), int(starts[g + 1]), int(groups[g] - (gone[g + 1] - gone[g])))
                for g in range(len(groups))
            ]
        )
    counted = (
        [[p[2] for p in file_pieces] for file_pieces in pieces]
        if keeps_rows or query is None
        else _count_lake(con, table, query, pieces, file_indexes)
    )
    if counted is None:
        assert query is not None
        whole = [Shard(f, p[0], p[1]) for f, file_pieces in enumerate(pieces) for p in file_pieces]
        return whole, _count_rows(con, query, [_lake_shard(table.scan, file_indexes, s) for s in whole])
    yields = counted
    shards: list[Shard] = []
    counts: list[int] = []
    for file, (found, file_pieces, file_yields) in enumerate(zip(direct, pieces, yields, strict=True)):
        if found is None:
            shards.extend(Shard(file, p[0], p[1]) for p in file_pieces)
            counts.extend(file_yields)
            continue
        # Row groups merge as in plan_shards; empty ones (all deleted, or filtered out) drop.
        sizes = [p[1] - p[0] for p in file_pieces]
        file_shards, file_counts = skip_empty_groups([sizes], [file_yields], target_rows=shard_rows)
        shards.extend(Shard(file, s.start, s.stop) for s in file_shards)
        counts.extend(file_counts)
    return shards, counts


def _count_lake(
    con: duckdb.DuckDBPyConnection,
    table: LakeTable,
    query: str,
    pieces: Sequence[Sequence[tuple[int, int, int]]],
    file_indexes: Sequence[int],
) -> list[list[int]] | None:
    """Rows a filtering query yields in each piece, in one pass over the catalog's scan."""
    reduced = counting_query(con, query)
    if reduced is None:
        return None
    keys = [file_indexes[f] for f, file_pieces in enumerate(pieces) for _ in file_pieces]
    starts = [p[0] for file_pieces in pieces for p in file_pieces]
    tagged = f"SELECT *, file_index AS {FILE}, file_row_number AS {ROW} FROM {table.scan}"
    try:
        found = count_per_range(con, tagged, reduced, keys, starts)
    except duckdb.Error as exc:
        raise _lake_error(exc, table) from None
    per_file: list[list[int]] = []
    position = 0
    for file_pieces in pieces:
        per_file.append([int(c) for c in found[position : position + len(file_pieces)]])
        position += len(file_pieces)
    return per_file


def _lake_shard(scan: str, file_indexes: Sequence[int], shard: Shard) -> str:
    return (
        f"SELECT * FROM {scan} WHERE file_index = {int(file_indexes[shard.file])} "
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
    # The times of the catalog's first snapshot and of this one tell a catalog recreated at the
    # same path (a rerun demo, a test) from the one a cached copy was made of.
    metadata = f"__ducklake_metadata_{table.alias}"
    stamps = con.execute(
        f"SELECT min(snapshot_time)::VARCHAR, max(snapshot_time) FILTER (snapshot_id = ?)::VARCHAR "
        f"FROM {metadata}.ducklake_snapshot",
        [table.version],
    ).fetchone()
    identity = f"{table.location.target}|{table.version}|{stamps}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    copy = directory / f"catalog-{key}.duckdb"
    if not copy.exists():
        partial = directory / f".catalog-{key}-{os.getpid()}.duckdb"
        alias = f"duckstream_copy_{os.getpid()}"
        try:
            con.execute(f"ATTACH {engine.sql_literal(str(partial))} AS {alias}")
            con.execute(f"COPY FROM DATABASE {metadata} TO {alias}")
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
