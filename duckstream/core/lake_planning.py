"""Planning a pinned lake table: which of its data files pyarrow reads, shards, row counts.

Files that :mod:`duckstream.core.lake_files` finds readable straight from Parquet are cut by
their row groups, like any Parquet source; the rest stay on the catalog's own scan, cut by
``shard_rows`` of their row numbers. Row counts come from footers less deletes, or, through a
filter, from one pass over the catalog's scan.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from duckstream import engine
from duckstream.core import sql as sqlmod
from duckstream.core.batch_sql import BatchQuery, output_schema
from duckstream.core.counting import FILE, ROW, count_per_range, counting_query
from duckstream.core.lake import LakeAccess, LakeTable, file_index_fence, open_pinned
from duckstream.core.lake_files import DirectFile, all_deleted, direct_files
from duckstream.core.late_filter import Count, LateQuery, late_query
from duckstream.core.planning import (
    StreamPlan,
    batch_query,
    cache_directory,
    count_rows,
    decoded_columns,
    decoder_bytes,
    local_folder,
    materialise,
    prepare,
    result_schema,
    row_bytes,
    sql_batch_rows,
)
from duckstream.core.recut import PartCounts, count_parts, group_sums, part_rows
from duckstream.core.shards import (
    FileNames,
    RowGroups,
    Shard,
    ShardTable,
    plan_fingerprint,
    skip_empty_groups,
)
from duckstream.errors import CatalogError
from duckstream.redact import redact

__all__ = ["prepare_lake", "worker_attach"]


@dataclass(frozen=True)
class _Chunk:
    """A run of one file's rows as the catalog lists them (a row of the layout query)."""

    file_index: int
    rows: int
    first: int  # file row numbers, inclusive
    last: int
    name: str | None  # the file's path, unless a user column hides it

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> _Chunk:
        file_index, _, rows, first, last, name = row
        return cls(int(file_index), int(rows), int(first), int(last), name)


@dataclass(frozen=True)
class _Direct:
    """A lake file pyarrow reads itself, with the rows the snapshot deleted."""

    file: DirectFile
    deleted: np.ndarray


@dataclass(frozen=True)
class _Piece:
    """A candidate shard: file rows ``start..stop``, ``rows`` of them visible before any filter."""

    start: int
    stop: int
    rows: int


def prepare_lake(
    table: LakeTable,
    sql: str | None,
    *,
    cache_dir: str | os.PathLike[str] | None,
    shard_rows: int,
    count: Count = "exact",
) -> StreamPlan:
    """Plan a pinned DuckLake table: shards are row ranges of its data files (and inlined rows)
    as the catalog lists them at the snapshot, with deletes and later writes already excluded.

    ``count="skip"``: a filtering query is not counted but run on each batch (see
    :mod:`duckstream.core.late_filter`); shards count the rows visible at the snapshot."""
    con = open_pinned(table)
    try:
        try:
            con.execute(f"CREATE OR REPLACE TEMP VIEW source AS SELECT * FROM {table.scan}")
            source_schema = result_schema(con, "SELECT * FROM source")
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
        chunks = [_Chunk.of(row) for row in layout]
        names = {chunk.file_index: chunk.name for chunk in chunks}
        file_indexes = list(names)
        files = [names[i] or f"{table.name} file {i}" for i in file_indexes]
        _check_files_exist([n for n in names.values() if n is not None], table)
        query = sqlmod.name_the_source(sql, [table.name]) if sql else None
        shape = sqlmod.shape_of(con, query, source_schema.names)
        skipping = late_query(con, query, shape, source_schema) if count == "skip" else None
        if not shape.row_local and skipping is None:
            assert query is not None
            key_parts: list[object] = [repr(table), layout]
            result = materialise(con, query, files, key_parts, shape.ordered, cache_dir)
            return prepare(result, None, s3=table.s3, cache_dir=cache_dir, original_schema=source_schema)
        try:
            layout_files = _direct_layout(con, table, source_schema, chunks, file_indexes)
        except duckdb.Error as exc:
            raise _lake_error(exc, table) from None
        direct = [d.file if d is not None else None for d in layout_files]
        metas = [d.meta for d in direct if d is not None]
        files = [d.meta.path if d is not None else f for d, f in zip(direct, files, strict=True)]
        schema = result_schema(con, query or "SELECT * FROM source")
        batch: BatchQuery | None = None
        late: LateQuery | None = None
        if skipping is not None:
            late, schema = skipping
        elif shape.columns is None:
            assert query is not None
            batch, _ = batch_query(con, query, source_schema, shape.keeps_rows)
            if batch is not None:
                schema = output_schema(query, batch, source_schema)
        keeps_rows = shape.keeps_rows or late is not None
        part_size = part_rows([d.meta.row_groups for d in direct if d is not None], row_bytes(metas))
        shards, counts, yields, parts = _lake_shards(
            con, table, query, keeps_rows, chunks, layout_files, file_indexes, shard_rows, part_size
        )
        attach = worker_attach(con, table, cache_dir)
    finally:
        con.close()
    decodes = shape.columns is not None or batch is not None or late is not None
    return StreamPlan(
        files=FileNames.of(files),
        row_groups=RowGroups.of([d.meta.row_groups if d is not None else () for d in direct]),
        shards=ShardTable.of(shards),
        counts=np.asarray(counts, dtype=np.int64),
        query=query,
        narrow=keeps_rows,  # for the files pyarrow reads; the catalog's scan always skips
        columns=late.columns if late is not None else shape.columns,
        schema=schema,
        s3=table.s3,
        fingerprint=plan_fingerprint(
            files, shards, counts, f"{table.scan}|{'' if late is None else 'count=skip|'}{query}"
        ),
        lake=LakeAccess.of(
            attach=attach,
            scan=table.scan,
            postgres=table.location.kind == "postgres",
            file_indexes=file_indexes,
            direct=[decodes and d is not None for d in direct],
            deletes=[d.delete_file if d is not None else None for d in direct],
            renames=[d.renames if d is not None else () for d in direct],
            inlined_deletes=[d.inlined_deletes if d is not None else () for d in direct],
        ),
        row_bytes=row_bytes(metas, late.columns) if late is not None else row_bytes(metas),
        decoder_bytes=decoder_bytes(metas, decoded_columns(shape.columns, batch, late)),
        batch=batch,
        sql_batch_rows=sql_batch_rows(metas, batch),
        late=late,
        yields=yields,
        parts=parts,
        cache_dir=local_folder(cache_dir),
    )


def _direct_layout(
    con: duckdb.DuckDBPyConnection,
    table: LakeTable,
    schema: pa.Schema,
    chunks: Sequence[_Chunk],
    file_indexes: Sequence[int],
) -> list[_Direct | None]:
    """For each planned file, how pyarrow reads it (None: through the catalog's scan).

    DuckLake numbers a snapshot's files (``file_index``) in the order it lists them; a file
    is read directly only when its rows as the catalog sees them are the ones the footer
    and the delete file account for, so a mismatch falls back to the catalog, never misreads.
    """
    listed = direct_files(con, table, schema)
    visible: dict[int, int] = {}
    named: dict[int, str | None] = {}
    for chunk in chunks:
        visible[chunk.file_index] = visible.get(chunk.file_index, 0) + chunk.rows
        named[chunk.file_index] = chunk.name
    found: list[_Direct | None] = []
    for file_index in file_indexes:
        candidate = listed[file_index] if file_index < len(listed) else None
        if candidate is None or named[file_index] not in (None, candidate.meta.path):
            found.append(None)
            continue
        deleted = all_deleted(candidate.delete_file, candidate.inlined_deletes, candidate.meta.path, table.s3)
        ok = candidate.meta.rows - len(deleted) == visible[file_index]
        found.append(_Direct(candidate, deleted) if ok else None)
    return found


def _lake_shards(
    con: duckdb.DuckDBPyConnection,
    table: LakeTable,
    query: str | None,
    keeps_rows: bool,
    chunks: Sequence[_Chunk],
    direct: Sequence[_Direct | None],
    file_indexes: Sequence[int],
    shard_rows: int,
    part_size: int,
) -> tuple[list[Shard], list[int], RowGroups | None, PartCounts | None]:
    """Shards of the lake's files, the rows each yields, and the rows each row group and each
    part of ``part_size`` rows of a row group of a file read directly yields (see
    ``StreamPlan.yields`` and ``StreamPlan.parts``).

    A file read directly is cut by its row groups (a decoder cannot start inside one); one
    read by the catalog's scan by ``shard_rows`` of its row numbers. A filtering query is
    counted in one pass over the catalog's scan, and the row groups it leaves empty are
    never read.
    """
    index = {file_index: i for i, file_index in enumerate(file_indexes)}
    by_file: dict[int, list[_Piece]] = {}
    for chunk in chunks:
        by_file.setdefault(index[chunk.file_index], []).append(
            _Piece(chunk.first, chunk.last + 1, chunk.rows)
        )
    # What is counted, per file in order: the parts of a direct file's row groups, or the
    # catalog's chunks of a file it scans.
    pieces: list[list[_Piece]] = []
    for file, found in enumerate(direct):
        if found is None:
            pieces.append(by_file[file])
            continue
        cut = count_parts(found.file.meta.row_groups, part_size)
        starts = np.concatenate(([0], np.cumsum(cut, dtype=np.int64)))
        gone = np.searchsorted(found.deleted, starts)
        pieces.append(
            [
                _Piece(int(starts[p]), int(starts[p + 1]), int(cut[p] - (gone[p + 1] - gone[p])))
                for p in range(len(cut))
            ]
        )
    counted = (
        [[p.rows for p in file_pieces] for file_pieces in pieces]
        if keeps_rows or query is None
        else _count_lake(con, table, query, pieces, file_indexes)
    )
    if counted is None:
        assert query is not None
        whole = [
            Shard(f, start, stop)
            for f, found in enumerate(direct)
            for start, stop in (
                _group_bounds(found.file.meta.row_groups)
                if found is not None
                else [(p.start, p.stop) for p in pieces[f]]
            )
        ]
        return (
            whole,
            count_rows(con, query, [_lake_shard(table.scan, file_indexes, s) for s in whole]),
            None,
            None,
        )
    shards: list[Shard] = []
    counts: list[int] = []
    yields: list[list[int]] = []
    for file, (found, file_pieces, per_piece) in enumerate(zip(direct, pieces, counted, strict=True)):
        if found is None:
            shards.extend(Shard(file, p.start, p.stop) for p in file_pieces)
            counts.extend(per_piece)
            yields.append([])  # files the catalog's scan reads have no row groups in the plan
            continue
        # Row groups merge as in plan_shards; empty ones (all deleted, or filtered out) drop.
        sizes = found.file.meta.row_groups
        per_group = group_sums(sizes, part_size, per_piece)
        file_shards, file_counts = skip_empty_groups([sizes], [per_group], target_rows=shard_rows)
        shards.extend(Shard(file, s.start, s.stop) for s in file_shards)
        counts.extend(file_counts)
        yields.append(per_group)
    in_parts = [each if found is not None else [] for found, each in zip(direct, counted, strict=True)]
    return shards, counts, RowGroups.of(yields), PartCounts(part_size, RowGroups.of(in_parts))


def _group_bounds(groups: Sequence[int]) -> list[tuple[int, int]]:
    """File rows ``start..stop`` of each row group of ``groups``."""
    ends = np.cumsum(groups, dtype=np.int64).tolist()
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _count_lake(
    con: duckdb.DuckDBPyConnection,
    table: LakeTable,
    query: str,
    pieces: Sequence[Sequence[_Piece]],
    file_indexes: Sequence[int],
) -> list[list[int]] | None:
    """Rows a filtering query yields in each piece, in one pass over the catalog's scan."""
    reduced = counting_query(con, query)
    if reduced is None:
        return None
    # Empty pieces (a row group of no rows) are not ranges: they would share a start.
    keys = [file_indexes[f] for f, file_pieces in enumerate(pieces) for p in file_pieces if p.stop > p.start]
    starts = [p.start for file_pieces in pieces for p in file_pieces if p.stop > p.start]
    tagged = (
        f"SELECT *, file_index AS {FILE}, file_row_number AS {ROW} FROM {table.scan} {file_index_fence()}"
    )
    try:
        found = count_per_range(con, tagged, reduced, keys, starts)
    except duckdb.Error as exc:
        raise _lake_error(exc, table) from None
    counts = iter(found.tolist())
    return [[next(counts) if p.stop > p.start else 0 for p in file_pieces] for file_pieces in pieces]


def _lake_shard(scan: str, file_indexes: Sequence[int], shard: Shard) -> str:
    return (
        f"SELECT * FROM {scan} WHERE file_index = {int(file_indexes[shard.file])} "
        f"AND file_row_number BETWEEN {shard.start} AND {shard.stop - 1} {file_index_fence()}"
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


def worker_attach(
    con: duckdb.DuckDBPyConnection, table: LakeTable, cache_dir: str | os.PathLike[str] | None
) -> str:
    """The ATTACH a worker runs: PostgreSQL read-only, or a copy of a file catalog.

    A DuckDB catalog file admits one writing process and no readers beside it, and the
    training process may hold it open: workers read a copy of its metadata instead, which is
    consistent and, for a pinned snapshot, complete.
    """
    if table.location.kind == "postgres":
        return table.location.attach_sql(table.alias, read_only=True)
    directory = cache_directory(cache_dir)
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
