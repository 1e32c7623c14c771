"""Sources (paths, directories, globs, ``s3://`` URIs, lists of them) as Parquet file patterns."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from duckstream.engine import sql_literal
from duckstream.errors import SourceError

__all__ = ["SourceLike", "is_remote", "parquet_patterns", "read_parquet_sql"]

PathLike = str | os.PathLike[str]
SourceLike = PathLike | Sequence[PathLike]

_GLOB_CHARS = frozenset("*?[")


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
