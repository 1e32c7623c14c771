"""A source (Parquet paths, ``s3://`` URIs, a pinned LakeTable) as a DuckDB view to profile or query."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb

from duckstream import engine
from duckstream.core.lake import LakeTable, open_pinned
from duckstream.core.planning import Source
from duckstream.core.source import is_remote, list_files, parquet_patterns
from duckstream.errors import ConfigurationError
from duckstream.storage import S3Settings

__all__ = ["SourceAccess", "describe_source", "open_source", "quote_identifier"]

# DuckDB draws a progress bar on long queries: not in a report's output.
_QUIET = "SET enable_progress_bar = false"
# What DuckDB reads of a local directory (having checked access to the directory itself).
_UNDER = "/**/*.parquet"


@dataclass(frozen=True)
class SourceAccess:
    """How a separate connection reads a source: what to run first and which paths it touches.

    ``setup`` holds statements (an ATTACH of a lake catalog) to run before ``scan`` is usable;
    ``paths`` are the exact files the scan reads, for DuckDB's ``allowed_paths``; ``patterns``
    the paths, globs, directories and ``s3://`` URIs that name them, as DuckDB reads them, so
    that SQL may read the source by the name its user knows it by.
    """

    label: str
    scan: str  # a FROM clause item
    setup: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


def describe_source(source: Source) -> str:
    """How a report names ``source``."""
    if isinstance(source, LakeTable):
        return f"lake table {source.name} at snapshot {source.version}"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return ", ".join(os.fspath(s) for s in source)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def open_source(
    source: Source, s3: S3Settings, *, elsewhere: bool = False
) -> Iterator[tuple[duckdb.DuckDBPyConnection, SourceAccess]]:
    """A connection on which ``access.scan`` reads ``source``; closed (or released) on exit.

    ``elsewhere``: also prepare ``access.setup`` for reading from another DuckDB database (for a
    lake table on a catalog file, a consistent copy of its metadata).
    """
    if isinstance(source, LakeTable):
        with _open_lake(source, elsewhere) as opened:
            yield opened
        return
    patterns = parquet_patterns(source)
    remote = any(is_remote(p) for p in patterns)
    con = engine.connect(s3=s3, extensions=("httpfs",) if remote else ())
    try:
        con.execute(_QUIET)
        files = list_files(patterns, con)
        listed = ", ".join(engine.sql_literal(f) for f in files)
        access = SourceAccess(
            label=describe_source(source),
            scan=f"read_parquet([{listed}], union_by_name = true)",
            paths=tuple(files),
            patterns=_names(patterns),
        )
        yield con, access
    finally:
        con.close()


def _names(patterns: list[str]) -> tuple[str, ...]:
    """The patterns, and the local directory of each ``<dir>/**/*.parquet`` among them: DuckDB
    reads ``read_parquet('<dir>')`` as exactly those files."""
    names = dict.fromkeys(patterns)
    for pattern in patterns:
        directory = pattern[: -len(_UNDER)]
        if (
            pattern.endswith(_UNDER)
            and directory
            and not is_remote(pattern)
            and not any(c in directory for c in "*?[")
        ):
            names[directory] = None
    return tuple(names)


@contextmanager
def _open_lake(table: LakeTable, elsewhere: bool) -> Iterator[tuple[duckdb.DuckDBPyConnection, SourceAccess]]:
    # Imported here: planning's worker attach (a copy of a file catalog, or PostgreSQL read-only)
    # is exactly what another connection beside an open catalog needs.
    from duckstream.core.lake_planning import worker_attach

    con = open_pinned(table)
    try:
        try:
            con.execute(_QUIET)  # a connection setting: a cursor's leaves the catalog's own alone
            con.execute(f"SELECT * FROM {table.scan} LIMIT 0")
        except duckdb.Error as exc:
            raise ConfigurationError(
                f"cannot read {describe_source(table)}: {str(exc).splitlines()[0]}"
            ) from None
        setup = (worker_attach(con, table, None),) if elsewhere else ()
        paths = _lake_files(con, table) if elsewhere else ()
        yield (
            con,
            SourceAccess(
                label=describe_source(table),
                scan=table.scan,
                setup=setup,
                paths=paths,
            ),
        )
    finally:
        con.close()


def _lake_files(con: duckdb.DuckDBPyConnection, table: LakeTable) -> tuple[str, ...]:
    """The data and delete files of the table at its snapshot: all a reader of it may open."""
    schema, _, name = table.name.rpartition(".")
    sql = (
        f"SELECT data_file, delete_file FROM ducklake_list_files({engine.sql_literal(table.alias)}, "
        f"{engine.sql_literal(name)}, schema => {engine.sql_literal(schema or 'main')}, "
        f"snapshot_version => {int(table.version)})"
    )
    try:
        rows = con.execute(sql).fetchall()
    except duckdb.Error as exc:
        raise engine.query_error(exc, sql, s3=table.s3) from None
    return tuple(sorted({f for row in rows for f in row if f}))
