"""Sources (paths, directories, globs, ``s3://`` URIs, lists of them) as Parquet file patterns."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.core import remote_files
from duckstream.core.retry import read_whole
from duckstream.engine import query_error, sql_literal
from duckstream.errors import SourceError
from duckstream.redact import redact
from duckstream.storage import S3Settings, pyarrow_s3

__all__ = [
    "FileMeta",
    "SourceLike",
    "check_schemas",
    "is_remote",
    "list_files",
    "parquet_patterns",
    "read_metadata",
    "read_parquet_sql",
]

PathLike = str | os.PathLike[str]
SourceLike = PathLike | Sequence[PathLike]

_GLOB_CHARS = frozenset("*?[")
# Sources of fewer files plan in well under a second: no progress bar.
_PROGRESS_FILES = 1_000


def is_remote(uri: str) -> bool:
    """True for object-store URIs (``s3://``, ``s3a://``, ``gs://``, ``http(s)://``...)."""
    return "://" in uri and not uri.startswith("file://")


def parquet_patterns(source: SourceLike) -> list[str]:
    """The Parquet file patterns a source names, in the order given.

    A directory (local, or an ``s3://`` prefix without a glob or ``.parquet`` suffix) means
    every ``**/*.parquet`` under it. Local paths must exist, and local globs must match.
    """
    items: Sequence[PathLike] = [source] if isinstance(source, (str, os.PathLike)) else source
    if isinstance(source, (bytes, bytearray)) or not items:
        raise SourceError(f"expected a path, glob, s3:// URI or a list of them, found {source!r}")
    return [_pattern(os.fspath(item)) for item in items]


def _pattern(item: str) -> str:
    if not item.strip():
        raise SourceError("expected a path, glob or s3:// URI, found an empty string")
    if item.startswith("file://"):
        item = item[len("file://") :]
    has_glob = any(ch in item for ch in _GLOB_CHARS)
    if is_remote(item):
        if has_glob or item.endswith(".parquet"):
            return item
        return item.rstrip("/") + "/**/*.parquet"
    path = Path(item).expanduser()
    if has_glob:
        if not glob.glob(str(path), recursive=True):
            raise SourceError(f"no files match {item!r}")
        return str(path)
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise SourceError(f"directory {item!r} holds no *.parquet files")
        return str(path / "**" / "*.parquet")
    if not path.exists():
        raise SourceError(f"no such file or directory: {item!r}")
    return str(path)


def read_parquet_sql(patterns: Sequence[str]) -> str:
    """``read_parquet([...])`` over ``patterns``, with columns unified by name across files."""
    listed = ", ".join(sql_literal(p) for p in patterns)
    return f"read_parquet([{listed}], union_by_name = true)"


@dataclass(frozen=True)
class FileMeta:
    """What a Parquet footer says about one file: rows per row group and the Arrow schema."""

    path: str
    row_groups: tuple[int, ...]
    schema: pa.Schema
    data_bytes: int = 0  # uncompressed size of the row groups, for sizing buffers
    column_bytes: tuple[tuple[str, int], ...] = ()  # the same per top-level column

    @property
    def rows(self) -> int:
        return sum(self.row_groups)


def list_files(patterns: Sequence[str], con: duckdb.DuckDBPyConnection) -> list[str]:
    """The files the patterns match, each pattern's matches sorted, duplicates dropped.

    DuckDB's own ``glob`` lists them, so a source means exactly what ``read_parquet`` would.
    """
    files: dict[str, None] = {}
    for pattern in patterns:
        try:
            matched = [row[0] for row in con.execute("SELECT file FROM glob(?)", [pattern]).fetchall()]
        except duckdb.Error as exc:
            raise query_error(exc, f"SELECT file FROM glob({sql_literal(pattern)})") from None
        if not matched:
            raise SourceError(f"no Parquet files match {pattern!r}")
        files.update(dict.fromkeys(sorted(matched)))
    return list(files)


def read_metadata(files: Sequence[str], s3: S3Settings, *, threads: int = 16) -> list[FileMeta]:
    """Footers of ``files`` (no data pages are read); object-store footers in parallel.

    Thousands of files take seconds (minutes on a distant store): a progress bar shows on a
    terminal, never in logs.
    """
    from tqdm.auto import tqdm

    remote = any(is_remote(f) for f in files)
    filesystem = pyarrow_s3(s3) if remote else None

    def one(path: str) -> FileMeta:
        return read_whole(
            lambda: _footer(path, filesystem),
            what=path,
            remote=is_remote(path),
            deadline=s3.retry_seconds,
            failed=lambda exc: SourceError(
                f"cannot read the Parquet footer of {path}: {redact(str(exc))}; "
                "the file is missing, truncated or not Parquet"
            ),
        )

    def shown(metas: Iterable[FileMeta]) -> list[FileMeta]:
        quiet = len(files) < _PROGRESS_FILES or not sys.stderr.isatty()
        return list(tqdm(metas, total=len(files), desc="planning: footers", unit="file", disable=quiet))

    if not remote or len(files) == 1:
        return shown(one(f) for f in files)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return shown(pool.map(one, files))


def _footer(path: str, filesystem: object) -> FileMeta:
    location = path.split("://", 1)[1] if is_remote(path) else path
    meta = pq.read_metadata(location, filesystem=filesystem if is_remote(path) else None)
    schema = meta.schema.to_arrow_schema()
    if is_remote(path):
        remote_files.remember_footer(path, meta)
    groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    columns: dict[str, int] = {}
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        for j in range(group.num_columns):
            chunk = group.column(j)
            name = chunk.path_in_schema.split(".", 1)[0]
            columns[name] = columns.get(name, 0) + chunk.total_uncompressed_size
    return FileMeta(path, groups, schema, size, tuple(columns.items()))


def check_schemas(metas: Sequence[FileMeta]) -> pa.Schema:
    """The common schema of the files; conflicting files are named with the column at fault."""
    first = metas[0]
    expected = {f.name: f.type for f in first.schema}
    for meta in metas[1:]:
        found = {f.name: f.type for f in meta.schema}
        for name in expected.keys() | found.keys():
            if expected.get(name) != found.get(name):
                raise SourceError(
                    f"schemas conflict: column {name!r} is {_describe(expected.get(name))} in "
                    f"{first.path} but {_describe(found.get(name))} in {meta.path}; every file "
                    "of a source must have the same columns and types"
                )
    return first.schema.remove_metadata()


def _describe(kind: pa.DataType | None) -> str:
    return "missing" if kind is None else str(kind)
