"""DuckLake catalogs whose table ``bench`` is a generated dataset's own Parquet files, not a copy.

``ducklake_add_data_files`` registers existing Parquet files with a table (DuckLake reads them
where they lie and never deletes them), so the lake path reads byte for byte what the plain
path reads (and ``lake-s3`` what the S3 path reads): any gap between the two is what going
through the catalog costs, nothing else.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from duckstream.engine import sql_literal

__all__ = ["LAKE_TABLE", "LakeLocation", "add_files", "ensure_file_lake"]

LAKE_TABLE = "bench"
_READY = "READY"  # written last: a folder without it is a half-made lake from an interrupted run


@dataclass(frozen=True, kw_only=True)
class LakeLocation:
    """Where a bench lake lives: the catalog (a file, or a DSN without password) and its data path."""

    catalog: str
    data_path: str


def ensure_file_lake(source: Path) -> LakeLocation:
    """A DuckLake catalog in a DuckDB file beside ``source``, made on first use and then reused.

    It sits in ``<source>.lake/``, so it is keyed by the dataset folder's name like the data
    itself, and goes when the cache folder is deleted.
    """
    from duckstream.catalog import LakehouseCatalog

    folder = source.with_name(source.name + ".lake")
    location = LakeLocation(catalog=str(folder / "catalog.ducklake"), data_path=str(folder / "files"))
    if (folder / _READY).exists():
        return location
    shutil.rmtree(folder, ignore_errors=True)
    with LakehouseCatalog(location.catalog, data_path=location.data_path) as catalog:
        add_files(catalog.con, source)
    (folder / _READY).write_text("")
    return location


def add_files(con: duckdb.DuckDBPyConnection, source: Path, *, uri: str | None = None) -> None:
    """Create table ``bench`` in the lake attached as ``lake`` and register ``source``'s files with it.

    With ``uri`` (``s3://bucket/prefix``, where they were uploaded), the objects of the same
    names there instead: the table then reads what the S3 path reads.
    """
    names = sorted(path.name for path in source.glob("*.parquet"))
    if not names:
        raise FileNotFoundError(f"no Parquet files in {source}")
    files = [f"{uri or source}/{name}" for name in names]
    con.execute(
        f"CREATE TABLE lake.{LAKE_TABLE} AS SELECT * FROM read_parquet({sql_literal(files[0])}) LIMIT 0"
    )
    for file in files:
        con.execute(f"CALL ducklake_add_data_files('lake', '{LAKE_TABLE}', {sql_literal(file)})")
