"""DuckLake tables as sources: where the catalog lives, a table pinned to one snapshot, and a
connection that reads it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, overload
from urllib.parse import unquote, urlsplit

import duckdb
import numpy as np

from duckstream import engine
from duckstream.core.shards import FileNames, packed
from duckstream.engine import sql_literal
from duckstream.errors import ConfigurationError
from duckstream.redact import MASK, register_secret
from duckstream.storage import S3Settings

__all__ = [
    "AttachedCatalog",
    "CatalogLocation",
    "LakeAccess",
    "LakeTable",
    "SparseFiles",
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

    @property
    def extensions(self) -> tuple[str, ...]:
        """The DuckDB extensions a connection to this catalog loads: PostgreSQL's only for a
        PostgreSQL catalog (each extension adds tens of milliseconds to every connection)."""
        return ("ducklake", "httpfs", *(("postgres_scanner",) if self.kind == "postgres" else ()))

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
    con = engine.connect(s3=table.s3, extensions=table.location.extensions)
    attach = table.location.attach_sql(table.alias, read_only=True)
    try:
        con.execute(attach)
    except duckdb.Error as exc:
        con.close()
        raise engine.query_error(exc, attach, s3=table.s3) from None
    return con


_T = TypeVar("_T")


@dataclass(frozen=True, eq=False)
class SparseFiles(Sequence[_T]):
    """What only some files of a plan have (a delete file, renamed columns), held for those
    files alone: ``sparse[f]`` is file ``f``'s, ``missing`` where it has none. A million files
    of which a thousand have one are a thousand values, not a million.

    Pickled, the files are steps from the previous one, in the narrowest type that holds them
    (see :func:`~duckstream.core.shards.packed`).
    """

    size: int  # files of the plan
    files: np.ndarray  # int64, ascending: the files that have one
    values: Sequence[_T]  # values[i] is file files[i]'s
    missing: _T

    @classmethod
    def of(
        cls,
        per_file: Iterable[_T],
        missing: _T,
        store: Callable[[list[Any]], Sequence[_T]] = tuple,
    ) -> SparseFiles[_T]:
        """From each file's value; a file whose value equals ``missing`` has none. ``store``
        holds the values that are kept."""
        if isinstance(per_file, SparseFiles):
            return per_file
        listed = list(per_file)
        files = [f for f, value in enumerate(listed) if value != missing]
        return cls(len(listed), np.asarray(files, dtype=np.int64), store([listed[f] for f in files]), missing)

    def mask(self) -> np.ndarray:
        """Whether each file has one, as a bool array."""
        having = np.zeros(self.size, dtype=bool)
        having[self.files] = True
        return having

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, file: int) -> _T: ...
    @overload
    def __getitem__(self, file: slice) -> Sequence[_T]: ...
    def __getitem__(self, file: int | slice) -> _T | Sequence[_T]:
        if isinstance(file, slice):
            return [self[f] for f in range(self.size)[file]]
        if file < 0:
            file += self.size
        if not 0 <= file < self.size:
            raise IndexError(f"expected a file number below {self.size}, found {file}")
        if not len(self.files):
            return self.missing
        at = int(np.searchsorted(self.files, file))
        if at < len(self.files) and self.files[at] == file:
            return self.values[at]
        return self.missing

    def __iter__(self) -> Iterator[_T]:
        every = [self.missing] * self.size
        for file, value in zip(self.files.tolist(), self.values, strict=True):
            every[file] = value
        return iter(every)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseFiles):
            return NotImplemented
        return (
            self.size == other.size
            and np.array_equal(self.files, other.files)
            and list(self.values) == list(other.values)
            and self.missing == other.missing
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SparseFiles({len(self.files)} of {self.size} files)"

    def __reduce__(self) -> tuple[Any, tuple[int, np.ndarray, Sequence[_T], _T]]:
        steps = np.diff(self.files, prepend=0)
        return _unpack_sparse, (self.size, packed(steps), self.values, self.missing)


def _unpack_sparse(size: int, steps: np.ndarray, values: Sequence[_T], missing: _T) -> SparseFiles[_T]:
    return SparseFiles(size, np.cumsum(steps, dtype=np.int64), values, missing)


def _shared(values: list[Any]) -> tuple[Any, ...]:
    """The values with equal ones one object: pickle then writes each once."""
    seen: dict[Any, Any] = {}
    return tuple(seen.setdefault(value, value) for value in values)


@dataclass(frozen=True, eq=False)
class LakeAccess:
    """How a worker reads a pinned lake table: attach the catalog read-only, scan at a snapshot.

    Held per file as arrays and :class:`SparseFiles`: a table of a million files pickles as a
    few arrays, not millions of objects. Build it with :meth:`of`.
    """

    attach: str = field(repr=False)  # may hold a PostgreSQL password
    scan: str
    postgres: bool
    # int64: DuckLake's `file_index` of each planned file, which workers filter on: unlike the
    # virtual `filename` column, a user column cannot hide it (COCO tables have a `filename`).
    file_indexes: np.ndarray
    # Per planned file: read straight from Parquet (bool; see core.lake_files), its delete
    # file, and the names it stores table columns under where they differ.
    direct: np.ndarray
    deletes: SparseFiles[str | None]
    renames: SparseFiles[tuple[tuple[str, str], ...]]
    inlined_deletes: SparseFiles[tuple[int, ...]]  # rows deleted that the catalog keeps

    @classmethod
    def of(
        cls,
        attach: str,
        scan: str,
        postgres: bool,
        *,
        file_indexes: Sequence[int],
        direct: Sequence[bool],
        deletes: Sequence[str | None],
        renames: Sequence[tuple[tuple[str, str], ...]],
        inlined_deletes: Sequence[tuple[int, ...]],
    ) -> LakeAccess:
        """From each planned file's values, in plan order."""
        sizes = {len(file_indexes), len(direct), len(deletes), len(renames), len(inlined_deletes)}
        if len(sizes) > 1:
            raise ValueError(f"expected one value per planned file, found {sorted(sizes)} values")
        return cls(
            attach,
            scan,
            postgres,
            file_indexes=np.asarray(file_indexes, dtype=np.int64).reshape(-1),
            direct=np.asarray(direct, dtype=bool).reshape(-1),
            deletes=SparseFiles.of(deletes, None, FileNames.of),
            renames=SparseFiles.of(renames, (), _shared),
            inlined_deletes=SparseFiles.of(inlined_deletes, (), tuple),
        )

    def deleted_rows(self, file: int) -> bool:
        """Whether rows of file ``file`` are deleted (so its row k is not file row k)."""
        return bool(self.deletes[file]) or bool(self.inlined_deletes[file])

    def with_deleted_rows(self) -> np.ndarray:
        """:meth:`deleted_rows` of every file, as a bool array."""
        deleted: np.ndarray = self.deletes.mask() | self.inlined_deletes.mask()
        return deleted

    def stored_names(self, file: int) -> dict[str, str]:
        """table column -> the name file ``file`` stores it under, where they differ."""
        return dict(self.renames[file])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LakeAccess):
            return NotImplemented
        return (
            (self.attach, self.scan, self.postgres) == (other.attach, other.scan, other.postgres)
            and np.array_equal(self.file_indexes, other.file_indexes)
            and np.array_equal(self.direct, other.direct)
            and (self.deletes, self.renames, self.inlined_deletes)
            == (other.deletes, other.renames, other.inlined_deletes)
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # file_index ascends in plan order: steps of 1 travel as one byte each.
        steps = packed(np.diff(self.file_indexes, prepend=0))
        flags = np.packbits(self.direct)
        sparse = (self.deletes, self.renames, self.inlined_deletes)
        return _unpack_lake, (self.attach, self.scan, self.postgres, steps, flags, *sparse)


def _unpack_lake(
    attach: str,
    scan: str,
    postgres: bool,
    steps: np.ndarray,
    flags: np.ndarray,
    deletes: SparseFiles[str | None],
    renames: SparseFiles[tuple[tuple[str, str], ...]],
    inlined_deletes: SparseFiles[tuple[int, ...]],
) -> LakeAccess:
    file_indexes = np.cumsum(steps, dtype=np.int64)
    direct = np.unpackbits(flags, count=len(file_indexes)).astype(bool)
    return LakeAccess(attach, scan, postgres, file_indexes, direct, deletes, renames, inlined_deletes)
