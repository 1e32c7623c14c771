"""Planning, in the main process: a source and its SQL become a picklable StreamPlan.

Metadata reads, SQL checks, per-shard row counts, and for SQL that needs the whole source its
result, computed once. Errors in the source or the SQL surface here, before workers start.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from duckstream import engine
from duckstream.core import sql as sqlmod
from duckstream.core.batch_sql import BatchQuery, output_schema, split_query
from duckstream.core.counting import FILE, ROW, count_per_range, counting_query
from duckstream.core.interleave import HELD_HEAD_BYTES, Entries, Layout
from duckstream.core.lake import LakeAccess, LakeTable, SparseFiles
from duckstream.core.late_filter import Count, LateQuery, check_count, late_query
from duckstream.core.plan_cache import PlanCache
from duckstream.core.recut import Copy, PartCounts, copied_groups, count_parts, group_sums, part_rows
from duckstream.core.retry import patiently
from duckstream.core.shards import (
    DEFAULT_SHARD_ROWS,
    FileNames,
    RowGroups,
    Shard,
    ShardTable,
    packed,
    plan_fingerprint,
    plan_shards,
    plan_summary,
    skip_empty_groups,
    starts_inside,
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
from duckstream.errors import SourceError
from duckstream.storage import S3Settings

__all__ = [
    "LakeAccess",
    "Source",
    "StreamPlan",
    "batch_query",
    "cache_directory",
    "count_rows",
    "decoded_columns",
    "decoder_bytes",
    "local_folder",
    "materialise",
    "prepare",
    "result_schema",
    "row_bytes",
    "sql_batch_rows",
]

_RESULT_ROW_GROUP = 8_192
_SQL_BATCH_BYTES = 16 * 1024 * 1024
_PAGE_BYTES = 1024 * 1024
_PAGE_VALUES = 1_024
_SQL_BATCH_MAX_ROWS = 65_536
# A read may start inside a shard this small (decoding rows only to drop them) to vary where
# each epoch reads it from.
_CHEAP_ENTRY_BYTES = 8 * 1024 * 1024
# Requests DuckDB has in flight at once when counting a filter over an object store: about 3
# requests a file, so 1,000 files on a store 20 ms away wait 30 s at 2 threads, 2 s at 32.
_REMOTE_COUNT_THREADS = 32

# What a stream reads: Parquet files (paths, globs, URIs, lists) or a pinned lake table.
Source = SourceLike | LakeTable


@dataclass(frozen=True)
class StreamPlan:
    """Everything a worker needs to read its share; plain, picklable data.

    File names are one string and per-shard and per-row-group numbers int64 arrays, so that a
    plan of a million files travels to every worker and rank as a few arrays, not millions of
    objects.
    """

    files: FileNames  # files[f]: the path of file f
    row_groups: RowGroups  # row_groups[f]: rows of each row group of file f
    shards: ShardTable  # shards[i]: shard i as a Shard
    # int64: rows each shard yields after the SQL (plans compare them through the fingerprint)
    counts: np.ndarray = dataclasses.field(compare=False)
    query: str | None  # the SQL over `source`; None reads the columns below
    narrow: bool  # output row k of a shard is its row start+k: ranges narrow the read itself
    columns: tuple[str, ...] | None  # plain projection: read with pyarrow
    schema: pa.Schema
    s3: S3Settings
    fingerprint: str
    lake: LakeAccess | None = None  # set when the rows come from a pinned DuckLake table
    row_bytes: int = 256  # average uncompressed bytes of a source row, for sizing buffers
    decoder_bytes: int = 0  # what one open decoder of the columns read holds (see decoder_bytes)
    # The query as DuckDB runs it over batches pyarrow decoded; None runs it per shard in DuckDB.
    batch: BatchQuery | None = None
    sql_batch_rows: int = _SQL_BATCH_MAX_ROWS  # rows of the columns DuckDB reads, at once
    # count="skip": the SQL runs on each batch after the shuffle; shards, counts and columns
    # are then the source's (see duckstream.core.late_filter), ``schema`` the SQL's output.
    late: LateQuery | None = None
    # Rows each row group yields through the query and the snapshot's deletes, where counted
    # per row group (None: not counted, where each yields its rows or a filter was counted
    # shard by shard); a file read by the catalog's scan has none.
    yields: RowGroups | None = None
    # Where ``yields`` are counted: what each part of the large row groups yields, of which a
    # shuffled read's local copies make their row groups (see duckstream.core.recut).
    parts: PartCounts | None = None
    # Where local copies go (materialised results, files copied for a shuffled read); None:
    # the temporary folder's duckstream-cache.
    cache_dir: str | None = dataclasses.field(default=None, compare=False)

    @property
    def num_rows(self) -> int:
        return int(self.counts.sum())

    def __getstate__(self) -> dict[str, Any]:
        # The counts travel in the narrowest type that holds them, as the shards do; not at all
        # where each shard yields its rows (no filter).
        whole = np.array_equal(self.counts, self.shards.rows)
        return {**self.__dict__, "counts": None if whole else packed(self.counts)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        counts = state["counts"]
        counts = state["shards"].rows if counts is None else np.asarray(counts, dtype=np.int64)
        self.__dict__.update(state, counts=counts)

    @functools.cached_property
    def layout(self) -> Layout:
        """The shards as the read order sees them, over the files' own row groups (see
        :mod:`duckstream.core.interleave`)."""
        return self._layout(self.row_groups, self.yields)

    def layout_for(self, ranks: int) -> Layout:
        """The layout a shuffled read shared by ``ranks`` ranks orders: :attr:`layout`, but
        over the copies' row groups for the files it reads from a copy (:meth:`copied_for`)."""
        return self._by_ranks(ranks)[1]

    def copied_for(self, ranks: int) -> dict[int, Copy]:
        """Per file a shuffled read shared by ``ranks`` ranks reads from a local copy in
        smaller row groups, the copy's row groups (see :mod:`duckstream.core.recut`)."""
        return self._by_ranks(ranks)[0]

    @functools.cached_property
    def _orders(self) -> dict[int, tuple[dict[int, Copy], Layout]]:
        return {}  # per rank count: what copied_for and layout_for give, worked out once

    def _by_ranks(self, ranks: int) -> tuple[dict[int, Copy], Layout]:
        if ranks not in self._orders:
            from duckstream.core.pipeline import read_streams  # it reads on top of this module

            copied = copied_groups(self, self.layout, read_streams(self), ranks)
            layout = self.layout
            if copied:
                groups = self.row_groups.replaced({f: copy.rows for f, copy in copied.items()})
                yields = self.yields
                if yields is not None:
                    yields = yields.replaced({f: copy.counts for f, copy in copied.items()})
                layout = self._layout(groups, yields)
            self._orders[ranks] = (copied, layout)
        return self._orders[ranks]

    def _layout(self, row_groups: RowGroups, yields: RowGroups | None) -> Layout:
        shards = self.shards
        # Files whose row groups a decoder reads; where row k of a shard is not file row
        # start + k (a filter, deleted rows), only ``yields`` says where row groups begin.
        by_groups = np.diff(row_groups.bounds)[shards.file] > 0
        if yields is None:
            by_groups &= self.narrow
            if self.lake is not None:
                by_groups &= ~self.lake.with_deleted_rows()[shards.file]
        if by_groups.any():
            entries = Entries(*starts_inside(shards, row_groups, by_groups, yields))
        else:
            entries = Entries(np.zeros(0, dtype=np.int64), np.zeros(len(shards) + 1, dtype=np.int64))
        counts = np.asarray(self.counts, dtype=np.int64)
        return Layout(
            counts,
            entries,
            counts * self.row_bytes <= _CHEAP_ENTRY_BYTES,
            HELD_HEAD_BYTES // max(1, self.row_bytes),
        )

    def summary(self) -> dict[str, Any]:
        """The plan as a saved state describes it (see :func:`plan_summary`)."""
        table = self.lake.scan if self.lake is not None else None
        return plan_summary(self.files, self.counts, self.query, table)

    def decoded(self, file: int) -> bool:
        """Whether pyarrow decodes file ``file`` (else DuckDB reads it, one shard at a time)."""
        if self.columns is None and self.batch is None:
            return False
        return self.lake is None or bool(self.lake.direct[file])

    @property
    def decodes(self) -> bool:
        """Whether pyarrow decodes every file."""
        if len(self.files) == 0:
            return True
        return self.decoded(0) and (self.lake is None or bool(self.lake.direct.all()))

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
    count: Count = "exact",
) -> StreamPlan:
    """Plan a stream over ``source`` through ``sql``; raises here, before any worker starts.

    ``source`` is Parquet (paths, globs, URIs) or a pinned :class:`LakeTable`.

    ``count="exact"`` counts the rows a filtering ``sql`` keeps in each shard (one pass over
    the predicate's columns). ``count="skip"`` plans a row-wise filtering ``sql`` on the
    source's rows instead, from metadata alone, and runs it on each batch after the shuffle
    (see :mod:`duckstream.core.late_filter`); any other SQL then raises ConfigurationError.

    ``original_schema`` is the schema of the data a materialised result was computed from,
    whose fixed-size lists the result gets back.

    Planning only reads, so an object store that stops answering part-way is waited out by
    planning again from the start, within ``s3.retry_seconds`` (a footer read that fails is
    retried on its own, in place).
    """
    check_count(count)
    deadline = (source.s3 if isinstance(source, LakeTable) else s3).retry_seconds
    return patiently(
        lambda: _prepare(
            source,
            sql,
            s3=s3,
            cache_dir=cache_dir,
            shard_rows=shard_rows,
            original_schema=original_schema,
            count=count,
        ),
        what=lambda _: _named(source),
        deadline=deadline,
    )


def _named(source: Source) -> str:
    """The source as the user named it, for the error raised past the deadline (the store's
    own words, which follow, name the request that failed)."""
    if isinstance(source, LakeTable):
        return f"lake table {source.name}"
    return ", ".join(parquet_patterns(source))


def _prepare(
    source: Source,
    sql: str | None,
    *,
    s3: S3Settings,
    cache_dir: str | os.PathLike[str] | None,
    shard_rows: int,
    original_schema: pa.Schema | None,
    count: Count,
) -> StreamPlan:
    if isinstance(source, LakeTable):
        from duckstream.core.lake_planning import prepare_lake  # it plans on top of this module

        return prepare_lake(source, sql, cache_dir=cache_dir, shard_rows=shard_rows, count=count)
    patterns = parquet_patterns(source)
    spellings = [os.fspath(s) for s in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    remote = any(is_remote(p) for p in patterns)
    con = engine.connect(s3=s3, extensions=("httpfs",) if remote else ())
    try:
        files = list_files(patterns, con)
        if original_schema is None:
            files = _outside_cache(files, patterns, cache_dir)
        # A materialised result (original_schema set) is a local file: no use to other machines.
        cache = PlanCache(cache_dir, s3) if cache_dir is not None and original_schema is None else None
        if cache is not None:
            key = cache.key(
                [*spellings, *patterns], sql, shard_rows=shard_rows, layout=_plan_layout(), count=count
            )
            listing = cache.listing(files)
            kept = cache.load(key, listing)
            if isinstance(kept, StreamPlan):
                return kept
        metas = read_metadata(files, s3)
        source_schema = check_schemas(metas)
        listed = ", ".join(engine.sql_literal(f) for f in files)
        con.execute(f"CREATE VIEW source AS SELECT * FROM read_parquet([{listed}])")
        query = sqlmod.name_the_source(sql, [*spellings, *patterns]) if sql else None
        shape = sqlmod.shape_of(con, query, source_schema.names)
        # count="skip": None when the query keeps every row; raises for SQL not row-wise.
        skipping = late_query(con, query, shape, source_schema) if count == "skip" else None
        if not shape.row_local and skipping is None:
            assert query is not None
            result = materialise(con, query, files, metas, shape.ordered, cache_dir)
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
        yields: RowGroups | None = None
        parts: PartCounts | None = None
        batch: BatchQuery | None = None
        late: LateQuery | None = None
        if skipping is not None:
            late, schema = skipping
        elif shape.columns is not None:
            schema = pa.schema([source_schema.field(c) for c in shape.columns])
        else:
            assert query is not None
            batch, schema = batch_query(con, query, source_schema, shape.keeps_rows)
        schema = _restore_fixed_size(schema, original_schema or source_schema)
        if shape.keeps_rows or late is not None:
            counts = [s.rows for s in shards]
        else:
            assert query is not None
            if remote:  # DuckDB waits on one request per thread: count with more in flight
                con.execute(f"SET threads = {_REMOTE_COUNT_THREADS}")
            shards, counts, yields, parts = _count_filtered(
                con, query, files, row_groups, shard_rows, part_rows(row_groups, row_bytes(metas))
            )
    finally:
        con.close()
    plan = StreamPlan(
        files=FileNames.of(files),
        row_groups=RowGroups.of([m.row_groups for m in metas]),
        shards=ShardTable.of(shards),
        counts=np.asarray(counts, dtype=np.int64),
        query=None if shape.columns is not None else query,
        narrow=shape.keeps_rows or late is not None,
        columns=late.columns if late is not None else shape.columns,
        schema=schema,
        s3=s3,
        fingerprint=plan_fingerprint(files, shards, counts, query if late is None else f"count=skip|{query}"),
        row_bytes=row_bytes(metas, late.columns) if late is not None else row_bytes(metas),
        decoder_bytes=decoder_bytes(metas, decoded_columns(shape.columns, batch, late)),
        batch=batch,
        sql_batch_rows=sql_batch_rows(metas, batch),
        late=late,
        yields=yields,
        parts=parts,
        cache_dir=local_folder(cache_dir),
    )
    if cache is not None:
        cache.store(key, listing, plan)
    return plan


def _outside_cache(
    files: Sequence[str], patterns: Sequence[str], cache_dir: str | os.PathLike[str] | None
) -> list[str]:
    """``files`` less those in the cache folder (copies, materialised results): a cache folder
    inside a source folder would otherwise be read as more of the source's rows."""
    folder = os.path.join(os.path.abspath(cache_directory(cache_dir, make=False)), "")
    kept = [f for f in files if is_remote(f) or not os.path.abspath(f).startswith(folder)]
    if not kept:
        raise SourceError(
            f"every Parquet file {', '.join(patterns)} matches lies in the cache folder {folder} "
            "(duckstream's copies and results): give the data's own path, or another cache_dir"
        )
    return kept


def _plan_layout() -> list[list[str]]:
    """The fields of what a kept plan holds: a plan kept by a build whose plans differ is
    another entry, never unpickled into a plan with fields missing."""
    kinds = (
        StreamPlan,
        Shard,
        ShardTable,
        RowGroups,
        FileNames,
        BatchQuery,
        S3Settings,
        LakeAccess,
        SparseFiles,
        LateQuery,
    )
    return [[kind.__name__, *(f.name for f in dataclasses.fields(kind))] for kind in kinds]


def batch_query(
    con: duckdb.DuckDBPyConnection, query: str, source_schema: pa.Schema, keeps_rows: bool
) -> tuple[BatchQuery | None, pa.Schema]:
    """The query split to run over pyarrow's batches, and its output schema.

    Where DuckDB cannot take the decoded columns as Arrow (a type it does not know), the query
    runs per shard in DuckDB instead, reading the files itself.
    """
    try:
        batch = split_query(con, query, source_schema, keeps_rows=keeps_rows)
        return batch, output_schema(query, batch, source_schema)
    except (duckdb.Error, pa.ArrowException, ValueError):
        return None, result_schema(con, query)


def _count_filtered(
    con: duckdb.DuckDBPyConnection,
    query: str,
    files: Sequence[str],
    row_groups: Sequence[Sequence[int]],
    shard_rows: int,
    part_size: int,
) -> tuple[list[Shard], list[int], RowGroups | None, PartCounts | None]:
    """Shards, the rows each yields through a filtering query, and the rows each row group
    and each part of ``part_size`` rows of a row group yields (None where counted shard by
    shard), counted in one pass.

    Row groups that yield nothing are left out of the plan, so they are never read.
    """
    reduced = counting_query(con, query)
    if reduced is None:
        shards = plan_shards(row_groups, target_rows=shard_rows)
        return shards, count_rows(con, query, [_parquet_shard(files, s) for s in shards]), None, None
    parts = [count_parts(groups, part_size) for groups in row_groups]
    keys: list[str] = []
    starts: list[int] = []
    for path, cut in zip(files, parts, strict=True):
        # Empty parts (a row group of no rows) are not ranges: they would share a start.
        offsets = [0, *itertools.accumulate(cut)][:-1]
        kept = [start for start, rows in zip(offsets, cut, strict=True) if rows]
        keys.extend([path] * len(kept))
        starts.extend(kept)
    listed = ", ".join(engine.sql_literal(f) for f in files)
    tagged = (
        f"SELECT * RENAME (file_row_number AS {ROW}) "
        f"FROM read_parquet([{listed}], filename = '{FILE}', file_row_number = true)"
    )
    found = iter(count_per_range(con, tagged, reduced, keys, starts).tolist())
    per_part = [[next(found) if rows else 0 for rows in cut] for cut in parts]
    per_group = [group_sums(g, part_size, each) for g, each in zip(row_groups, per_part, strict=True)]
    shards, counts = skip_empty_groups(row_groups, per_group, target_rows=shard_rows)
    return shards, counts, RowGroups.of(per_group), PartCounts(part_size, RowGroups.of(per_part))


def result_schema(con: duckdb.DuckDBPyConnection, query: str) -> pa.Schema:
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


def count_rows(con: duckdb.DuckDBPyConnection, query: str, shard_views: Sequence[str]) -> list[int]:
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


def materialise(
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
    directory = cache_directory(cache_dir)
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


def row_bytes(metas: Sequence[FileMeta], columns: Sequence[str] | None = None) -> int:
    """Average uncompressed bytes of a row, or of ``columns`` of it (256 when no footer says)."""
    rows = sum(m.rows for m in metas)
    if not rows:
        return 256
    if columns is None:
        return max(1, sum(m.data_bytes for m in metas) // rows)
    wanted = set(columns)
    size = sum(n for m in metas for name, n in m.column_bytes if name in wanted)
    return max(1, size // rows)


def decoded_columns(
    columns: Sequence[str] | None, batch: BatchQuery | None, late: LateQuery | None
) -> tuple[str, ...]:
    """The source columns pyarrow decodes for a plan's reads (none where DuckDB reads)."""
    if late is not None:
        return tuple(late.columns)
    if columns is not None:
        return tuple(columns)
    if batch is not None:
        return (*batch.reads, *batch.wide)
    return ()


def decoder_bytes(metas: Sequence[FileMeta], columns: Sequence[str]) -> int:
    """What one open decoder of ``columns`` holds, from the footers: per column its current
    page, read and decompressed. Footers do not give page sizes; writers end a page at about
    1 MiB, checking every 1,024 values (pyarrow), so a page of wide values is 1,024 of them
    (10 MiB of 10 KiB images), and never more than the column's chunk of a row group.
    No ``columns``: every column.
    """
    rows = sum(m.rows for m in metas)
    groups = sum(len(m.row_groups) for m in metas)
    if not rows:
        return 0
    wanted = set(columns)
    sizes: dict[str, int] = {}
    for meta in metas:
        for name, n in meta.column_bytes:
            if name in wanted or not wanted:
                sizes[name] = sizes.get(name, 0) + n
    total = 0
    for size in sizes.values():
        page = max(_PAGE_BYTES, _PAGE_VALUES * size // rows)
        total += 2 * min(size // max(1, groups), page)
    return total


def sql_batch_rows(metas: Sequence[FileMeta], batch: BatchQuery | None) -> int:
    """Rows DuckDB takes at once: about 16 MiB of the columns it reads, 1,024 to 65,536 rows.

    Large batches amortise DuckDB's fixed cost per query; the bound keeps a query that reads
    wide values (``octet_length(image)``) from holding a row group of them at once.
    """
    if batch is None:
        return _SQL_BATCH_MAX_ROWS
    per_row = row_bytes(metas, batch.reads)
    return max(1_024, min(_SQL_BATCH_MAX_ROWS, _SQL_BATCH_BYTES // per_row))


def local_folder(cache_dir: str | os.PathLike[str] | None) -> str | None:
    """``cache_dir`` where it is a local folder (a plan keeps it for the copies it reads)."""
    return None if cache_dir is None or is_remote(os.fspath(cache_dir)) else os.fspath(cache_dir)


def cache_directory(cache_dir: str | os.PathLike[str] | None, *, make: bool = True) -> Path:
    """The local folder materialised results and copies go to: ``cache_dir``, or a temporary
    folder when it is unset or an object-store prefix (which keeps plans only; results are
    read locally); made unless ``make`` is false."""
    if cache_dir is None or is_remote(os.fspath(cache_dir)):
        directory = Path(tempfile.gettempdir()) / "duckstream-cache"
    else:
        directory = Path(cache_dir)
    if make:
        directory.mkdir(parents=True, exist_ok=True)
    return directory
