"""DuckLake tables as sources: where the catalog lives, a table pinned to one snapshot, and a
connection that reads it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import duckdb

from duckstream import engine
from duckstream.engine import sql_literal
from duckstream.errors import ConfigurationError
from duckstream.redact import MASK, register_secret
from duckstream.storage import S3Settings

__all__ = [
    "AttachedCatalog",
    "CatalogLocation",
    "LakeAccess",
    "LakeTable",
    "file_index_fence",
    "open_pinned",
    "quote_name",
]


# Ends a query over a lake scan that filters on `file_index`. A filter the user's SQL puts
# above it would otherwise reach the scan, which prunes files by their statistics and numbers
# the files left from 0: `file_index = 3` would then name another file. No filter passes a LIMIT.
def file_index_fence() -> str:
    """The clause that ends such a query."""
    return "LIMIT 9223372036854775807"


@dataclass(frozen=True)
class CatalogLocation:
    """A DuckLake catalog: PostgreSQL (libpq key=value ``target``) or a DuckDB file (path)."""

    kind: Literal["postgres", "duckdb"]
    target: str = field(repr=False)
    data_path: str | None

    @classmethod
    def parse(
        cls, dsn_or_path: str | os.PathLike[str], data_path: str | os.PathLike[str] | None
    ) -> CatalogLocation:
        """From ``postgresql://user:pass@host:port/db`` or a catalog file path."""
        text = os.fspath(dsn_or_path)
        data = None if data_path is None else os.fspath(data_path)
        if data is not None and "://" not in data:
            data = str(Path(data).expanduser().resolve())
        if data is not None:
            data = data.rstrip("/") + "/"
        if text.startswith(("postgresql://", "postgres://")):
            parts = urlsplit(text)
            if not parts.hostname or not parts.path.strip("/"):
                raise ConfigurationError(
                    "expected a DSN like postgresql://user:password@host:port/database, "
                    f"found {_masked(text)}"
                )
            fields = {
                "host": parts.hostname,
                "port": str(parts.port or 5432),
                "dbname": unquote(parts.path.strip("/")),
            }
            if parts.username:
                fields["user"] = unquote(parts.username)
            if parts.password:
                fields["password"] = unquote(parts.password)
                register_secret(fields["password"])
            target = " ".join(f"{k}={v}" for k, v in fields.items())
            return cls("postgres", target, data)
        if "://" in text:
            raise ConfigurationError(
                f"expected a postgresql:// DSN or a catalog file path, found {_masked(text)}"
            )
        path = Path(text).expanduser().resolve()
        return cls("duckdb", str(path), data)

    def attach_sql(self, alias: str, *, read_only: bool = False, target: str | None = None) -> str:
        """``ATTACH 'ducklake:...' AS alias (...)`` for this catalog (or a copy at ``target``)."""
        where = target or self.target
        uri = (
            f"ducklake:postgres:{where}"
            if self.kind == "postgres" and target is None
            else f"ducklake:{where}"
        )
        options = []
        if self.data_path is not None:
            options.append(f"DATA_PATH {sql_literal(self.data_path)}")
        if read_only:
            options.append("READ_ONLY")
        suffix = f" ({', '.join(options)})" if options else ""
        return f"ATTACH {sql_literal(uri)} AS {alias}{suffix}"

    def describe(self) -> str:
        """Where the catalog is, for messages (a password masked)."""
        if self.kind == "postgres":
            return f"the PostgreSQL catalog {_masked_libpq(self.target)}"
        return f"the catalog file {self.target}"

    def __repr__(self) -> str:
        where = _masked_libpq(self.target) if self.kind == "postgres" else self.target
        return f"CatalogLocation({self.kind}: {where}, data_path={self.data_path!r})"


def _masked(text: str) -> str:
    parts = urlsplit(text)
    if parts.password:
        return text.replace(f":{parts.password}@", f":{MASK}@")
    return text


def _masked_libpq(target: str) -> str:
    return " ".join(f"password={MASK}" if p.startswith("password=") else p for p in target.split())


def quote_name(name: str) -> str:
    """``schema.table`` or ``table`` as quoted SQL identifiers."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ConfigurationError(f"expected a table name like 'captions' or 'main.captions', found {name!r}")
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts)


class AttachedCatalog(Protocol):
    """What a pinned table uses of the catalog it came from (a ``LakehouseCatalog``)."""

    @property
    def closed(self) -> bool: ...

    @property
    def con(self) -> duckdb.DuckDBPyConnection: ...


@dataclass(frozen=True, eq=False)
class LakeTable:
    """A DuckLake table pinned to snapshot ``version``: a source that never changes.

    Streams read it through the catalog (deletes, inlined rows and compaction handled by
    DuckLake) at that snapshot; later writes to the table are invisible to it.
    """

    location: CatalogLocation
    name: str
    version: int
    s3: S3Settings
    alias: str = "lake"
    # The LakehouseCatalog it came from, used for planning in this process; never pickled.
    catalog: AttachedCatalog | None = field(default=None, repr=False, compare=False)

    @property
    def scan(self) -> str:
        """The table at its snapshot, as a FROM clause item."""
        return f"{self.alias}.{quote_name(self.name)} AT (VERSION => {int(self.version)})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["catalog"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"LakeTable({self.name!r}, version={self.version}, catalog={self.location!r})"


def open_pinned(table: LakeTable) -> duckdb.DuckDBPyConnection:
    """A connection on which ``table.scan`` reads the pinned table; the caller closes it.

    A cursor of the catalog the table came from while that is open in this process, else a new
    connection that attaches the catalog read-only (a PostgreSQL password stays out of errors).
    """
    if table.catalog is not None and not table.catalog.closed:
        return table.catalog.con.cursor()
    con = engine.connect(s3=table.s3, extensions=engine.ALL_EXTENSIONS)
    attach = table.location.attach_sql(table.alias, read_only=True)
    try:
        con.execute(attach)
    except duckdb.Error as exc:
        con.close()
        raise engine.query_error(exc, attach, s3=table.s3) from None
    return con


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
    inlined_deletes: tuple[tuple[int, ...], ...] = ()  # rows deleted that the catalog keeps

    def deleted_rows(self, file: int) -> bool:
        """Whether rows of file ``file`` are deleted (so its row k is not file row k)."""
        return bool(self.deletes and self.deletes[file]) or bool(
            self.inlined_deletes and self.inlined_deletes[file]
        )

    def stored_names(self, file: int) -> dict[str, str]:
        """table column -> the name file ``file`` stores it under, where they differ."""
        return dict(self.renames[file]) if self.renames else {}
