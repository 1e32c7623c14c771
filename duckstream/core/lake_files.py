"""The data files of a pinned lake table that pyarrow can read directly, and how.

A DuckLake scan through DuckDB exports Arrow at a fraction of pyarrow's speed (10 KiB images:
a fifth). Most of a table's files need nothing DuckLake alone knows: their rows at the snapshot
are the file's rows less a delete file's positions, and their columns are the table's under
the names the file stores (field ids, or the name mapping of files added from outside). Those
files are read straight from Parquet. Files DuckLake must still interpret -- inlined rows, a
compacted file holding rows of later snapshots, encrypted files, columns added or retyped
since the file was written -- stay on the catalog's own scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckstream.core.lake import LakeTable
from duckstream.core.retry import read_whole
from duckstream.core.source import FileMeta, is_remote, read_metadata
from duckstream.errors import SourceError
from duckstream.redact import redact
from duckstream.storage import S3Settings, pyarrow_s3

__all__ = ["DirectFile", "all_deleted", "deleted_positions", "direct_files"]

_FIELD_ID = b"PARQUET:field_id"


@dataclass(frozen=True)
class DirectFile:
    """A data file read straight from Parquet: its footer, deletes and column names."""

    meta: FileMeta
    delete_file: str | None
    # table column -> the name the file stores it under, where the two differ
    renames: tuple[tuple[str, str], ...]
    # rows deleted at the snapshot that the catalog keeps itself (a few deletes are inlined)
    inlined_deletes: tuple[int, ...] = ()


class _CatalogFile(NamedTuple):
    """A data file as the catalog's own table lists it."""

    path: str  # relative to the table's data path, or whole
    data_file_id: int
    mapping_id: int | None  # the name mapping of a file added from outside
    partial_max: int | None  # a compacted file: the latest snapshot whose rows it holds


def direct_files(
    con: duckdb.DuckDBPyConnection, table: LakeTable, schema: pa.Schema
) -> list[DirectFile | None]:
    """For each data file of the snapshot, in the catalog's order (its ``file_index``), how
    to read it directly, or None where only the catalog's scan reads it right.

    ``schema`` is the table's at the snapshot, as DuckDB gives it.
    """
    metadata = f"__ducklake_metadata_{table.alias}"
    version = int(table.version)
    schema_name, table_name = table.name.split(".") if "." in table.name else ("main", table.name)
    listed = con.execute(
        "SELECT data_file, delete_file, data_file_encryption_key IS NOT NULL "
        "OR delete_file_encryption_key IS NOT NULL "
        f"FROM ducklake_list_files('{table.alias}', ?, schema => ?, snapshot_version => ?)",
        [table_name, schema_name, version],
    ).fetchall()
    if not listed:
        return []
    table_id = con.execute(
        f"SELECT t.table_id FROM {metadata}.ducklake_table t JOIN {metadata}.ducklake_schema s "
        "USING (schema_id) WHERE t.table_name = ? AND s.schema_name = ? "
        f"AND t.begin_snapshot <= {version} AND (t.end_snapshot IS NULL OR t.end_snapshot > {version}) "
        f"AND s.begin_snapshot <= {version} AND (s.end_snapshot IS NULL OR s.end_snapshot > {version})",
        [table_name, schema_name],
    ).fetchone()
    if table_id is None:
        return [None] * len(listed)
    alive = f"begin_snapshot <= {version} AND (end_snapshot IS NULL OR end_snapshot > {version})"
    files = [
        _CatalogFile(str(path), int(file_id), mapping_id, partial_max)
        for path, file_id, mapping_id, partial_max in con.execute(
            f"SELECT path, data_file_id, mapping_id, partial_max FROM {metadata}.ducklake_data_file "
            f"WHERE table_id = ? AND {alive}",
            [table_id[0]],
        ).fetchall()
    ]
    inlined = _inlined_deletes(con, metadata, int(table_id[0]), version)
    columns = dict(
        con.execute(
            f"SELECT column_id, column_name FROM {metadata}.ducklake_column "
            f"WHERE table_id = ? AND parent_column IS NULL AND {alive}",
            [table_id[0]],
        ).fetchall()
    )
    mappings: dict[int, dict[int, str]] = {}
    # A file added from outside (ducklake_add_data_files) maps its own column names to the
    # table's column ids (`target_field_id`).
    for mapping_id, column_id, source_name in con.execute(
        f"SELECT mapping_id, target_field_id, source_name FROM {metadata}.ducklake_name_mapping "
        "WHERE parent_column IS NULL"
    ).fetchall():
        mappings.setdefault(int(mapping_id), {})[int(column_id)] = str(source_name)
    by_name: dict[str, list[_CatalogFile]] = {}
    for file in files:
        by_name.setdefault(file.path.rsplit("/", 1)[-1], []).append(file)
    wanted: list[str] = []
    for data_file, _, encrypted in listed:
        about = _about(data_file, by_name)
        if encrypted or about is None or (about.partial_max is not None and about.partial_max > version):
            continue  # encrypted, unknown, or holding rows of later snapshots
        wanted.append(data_file)
    metas = {m.path: m for m in read_metadata(wanted, table.s3)} if wanted else {}
    found: list[DirectFile | None] = []
    for data_file, delete_file, _ in listed:
        meta = metas.get(data_file)
        about = _about(data_file, by_name)
        if meta is None or about is None:
            found.append(None)
            continue
        names = (
            _by_field_id(meta.schema, columns)
            if about.mapping_id is None
            else {columns[c]: n for c, n in mappings.get(int(about.mapping_id), {}).items() if c in columns}
        )
        direct = _direct(meta, delete_file, names, schema)
        if direct is not None and about.data_file_id in inlined:
            direct = replace(direct, inlined_deletes=tuple(sorted(inlined[about.data_file_id])))
        found.append(direct)
    return found


def _about(data_file: str, by_name: dict[str, list[_CatalogFile]]) -> _CatalogFile | None:
    """The catalog's row for a listed file (``by_name``: the rows by file name; the catalog
    holds paths relative to the table's folder, or whole). One lookup a file: a table may
    have hundreds of thousands."""
    for file in by_name.get(data_file.rsplit("/", 1)[-1], ()):
        if data_file == file.path or data_file.endswith("/" + file.path.lstrip("/")):
            return file
    return None


def _inlined_deletes(
    con: duckdb.DuckDBPyConnection, metadata: str, table_id: int, version: int
) -> dict[int, set[int]]:
    """data file id -> its rows deleted by the snapshot that the catalog holds itself."""
    try:
        rows = con.execute(
            f"SELECT file_id, row_id FROM {metadata}.ducklake_inlined_delete_{table_id} "
            f"WHERE begin_snapshot <= {version}"
        ).fetchall()
    except duckdb.CatalogException:
        return {}  # the table never had an inlined delete
    found: dict[int, set[int]] = {}
    for file_id, row in rows:
        found.setdefault(int(file_id), set()).add(int(row))
    return found


def _by_field_id(file_schema: pa.Schema, columns: dict[int, str]) -> dict[str, str]:
    """table column -> file column, matched by the Parquet field ids DuckLake writes."""
    names: dict[str, str] = {}
    for field in file_schema:
        raw = (field.metadata or {}).get(_FIELD_ID)
        if raw is not None and int(raw) in columns:
            names[columns[int(raw)]] = field.name
    return names


def _direct(
    meta: FileMeta, delete_file: str | None, names: dict[str, str], schema: pa.Schema
) -> DirectFile | None:
    """The file, when it stores every table column with the table's type."""
    for field in schema:
        stored = names.get(field.name)
        if stored is None or stored not in meta.schema.names:
            return None  # a column added after the file was written: DuckLake fills it in
        if meta.schema.field(stored).type != field.type:
            return None
    renames = tuple(
        (column, stored) for column, stored in names.items() if column != stored and column in schema.names
    )
    return DirectFile(meta, delete_file, renames)


def deleted_positions(delete_file: str, data_file: str, s3: S3Settings) -> np.ndarray:
    """Sorted row numbers of ``data_file`` that ``delete_file`` deletes."""
    filesystem = pyarrow_s3(s3) if is_remote(delete_file) else None
    location = delete_file.split("://", 1)[1] if is_remote(delete_file) else delete_file
    table = read_whole(
        lambda: pq.read_table(location, columns=["file_path", "pos"], filesystem=filesystem),
        what=delete_file,
        remote=is_remote(delete_file),
        deadline=s3.retry_seconds,
        failed=lambda exc: SourceError(
            f"cannot read the delete file {delete_file} of {data_file}: {redact(str(exc))}"
        ),
    )
    # DuckLake writes one delete file per data file (the catalog pairs them); should one ever
    # hold several, only this file's rows count.
    if pc.count_distinct(table["file_path"]).as_py() > 1:
        mine = table.filter(pc.equal(table["file_path"], data_file))
    else:
        mine = table
    return np.unique(mine["pos"].to_numpy(zero_copy_only=False).astype(np.int64))


def all_deleted(
    delete_file: str | None, inlined: Sequence[int], data_file: str, s3: S3Settings
) -> np.ndarray:
    """Sorted row numbers of ``data_file`` deleted at the snapshot: its delete file's and
    those the catalog keeps itself."""
    parts = [np.asarray(inlined, dtype=np.int64)]
    if delete_file is not None:
        parts.append(deleted_positions(delete_file, data_file, s3))
    return np.unique(np.concatenate(parts))
