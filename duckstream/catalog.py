"""LakehouseCatalog: a DuckLake catalog (PostgreSQL or a local file) with run tracking.

Experiments and runs are lakehouse tables, so they join with data tables in one query; how they
are written (append-only) lives in :mod:`duckstream.runs.records`. This module attaches the lake,
pins its tables to snapshots and runs the statements: writes retry when concurrent commits
collide, and keyed appends into one table take turns.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import duckdb
import numpy as np

from duckstream import engine
from duckstream._closing import ClosesOnExit
from duckstream.core.lake import CatalogLocation, LakeTable
from duckstream.errors import CatalogError, ConfigurationError, DuckstreamError
from duckstream.redact import get_logger, redact
from duckstream.runs.records import Experiment, Run, RunRecords, RunStatus
from duckstream.storage import S3Settings

__all__ = ["Experiment", "LakehouseCatalog", "Run", "RunStatus", "refused_credentials"]

log = get_logger(__name__)

T = TypeVar("T")

# DuckLake retries a commit that lost the race for the next snapshot id itself; once its own
# retries run out it says so ("exceeded the maximum retry count"), naming no conflict.
_CONFLICT_MARKERS = (
    "conflict",
    "could not serialize",
    "deadlock",
    "retry the transaction",
    "exceeded the maximum retry count",
)
# DuckDB refusing a second writer of a catalog file says "conflict" too, but no retry helps while
# the other writer keeps the file open.
_FILE_BUSY_MARKERS = ("could not set lock on file", "unique file handle conflict")
# How a CatalogError says that PostgreSQL refused the credentials (see _credentials_error).
_REFUSED = "PostgreSQL refused the credentials of catalog"


def refused_credentials(exc: BaseException) -> bool:
    """Whether a catalog error says PostgreSQL refused the user or password (a server that
    answered: waiting cannot help). A QueryError was judged on DuckDB's own words, before any
    secret was masked in them."""
    if getattr(exc, "credentials_refused", False):
        return True
    return _REFUSED in str(exc) or engine.credentials_refused(str(exc))


def _commit_conflict(exc: DuckstreamError) -> bool:
    # QueryError shows DuckDB's first line only; DuckLake names the conflict on a later one.
    text = f"{exc} {getattr(exc, 'engine_message', '')}".lower()
    return any(m in text for m in _CONFLICT_MARKERS) and not any(m in text for m in _FILE_BUSY_MARKERS)


class LakehouseCatalog(RunRecords, ClosesOnExit):
    """A DuckLake catalog attached to a DuckDB connection, with experiments and runs.

    ``dsn_or_path`` is ``postgresql://user:password@host:port/db`` or a local catalog file (the
    embedded default); ``data_path`` a local folder or ``s3://bucket/prefix``. An existing
    catalog keeps the data path it stores: leave ``data_path`` out to use it (a different one
    is a :class:`CatalogError` naming both); ``location.data_path`` says which it is once open.
    A new catalog file defaults to ``<file>.files/`` beside it; a new PostgreSQL catalog needs
    ``data_path``. ``con`` is the connection, with the lake attached and in use, for your own
    SQL (:meth:`fetchall` and :meth:`write` run a statement on it with errors made readable).
    Writes retry when concurrent commits collide. A wrong PostgreSQL user or password is a
    :class:`CatalogError` at once (no retry). Experiments and runs (``register_experiment``,
    ``register_run``, ``complete_run``, ``fail_run``, ``record_run_metrics``, ``get_run``) come
    from :class:`~duckstream.runs.records.RunRecords`.
    """

    def __init__(
        self,
        dsn_or_path: str | os.PathLike[str],
        data_path: str | os.PathLike[str] | None = None,
        s3_endpoint: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
        *,
        s3_region: str | None = None,
        s3_use_ssl: bool | None = None,
        s3_retry_seconds: float | None = None,
        alias: str = "lake",
        read_only: bool = False,
        threads: int | None = None,
        retries: int = 8,
    ) -> None:
        if not alias.isidentifier():
            raise ConfigurationError(f"alias must be an identifier, found {alias!r}")
        location = CatalogLocation.parse(dsn_or_path, data_path)
        if location.kind == "duckdb" and not read_only:
            if location.data_path is None and not os.path.exists(location.target):
                # Only a new catalog file takes this default: an existing one keeps the data
                # path it stores (DuckLake refuses another).
                location = CatalogLocation.parse(location.target, location.target + ".files")
            os.makedirs(os.path.dirname(location.target), exist_ok=True)
        self.location = location
        self.alias = alias
        self.read_only = read_only
        self._retries = retries
        self._append_locks: dict[str, threading.Lock] = {}
        self._append_locks_guard = threading.Lock()
        self._s3 = S3Settings.resolve(
            s3_endpoint,
            s3_access_key,
            s3_secret_key,
            region=s3_region,
            use_ssl=s3_use_ssl,
            retry_seconds=s3_retry_seconds,
        )
        self._con: duckdb.DuckDBPyConnection | None = engine.connect(
            s3=self._s3, extensions=location.extensions, threads=threads
        )
        attach = location.attach_sql(alias, read_only=read_only)
        try:
            try:
                self.write("attach the catalog", attach)
            except DuckstreamError as exc:
                raise _attach_error(location, exc) from None
            self.fetchall(f"USE {alias}")
            # Workers attach with the data path the catalog stores, which this one now uses.
            self.location = replace(location, data_path=self._stored_data_path() or location.data_path)
            if not read_only:
                where = self.location.data_path
                if where is not None and "://" not in where:
                    os.makedirs(where, exist_ok=True)
                self._create_run_tables()
        except BaseException:
            self.close()
            raise

    # -- the connection and its statements -------------------------------------------------

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection with the lake attached and in use."""
        if self._con is None:
            raise DuckstreamError("this LakehouseCatalog is closed; open a new one")
        return self._con

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._con is None

    def fetchall(
        self, sql: str, params: list[Any] | None = None, *, on: duckdb.DuckDBPyConnection | None = None
    ) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` on :attr:`con` (or on ``on``, a cursor of it).

        A DuckDB error becomes a :class:`~duckstream.errors.QueryError` naming the statement,
        with keys and passwords removed.
        """
        try:
            return (self.con if on is None else on).execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql, s3=self._s3) from None

    def write(
        self,
        what: str,
        sql: str,
        params: list[Any] | None = None,
        *,
        on: duckdb.DuckDBPyConnection | None = None,
    ) -> list[tuple[Any, ...]]:
        """:meth:`fetchall` for a statement that writes, run again (with backoff, up to ``retries``
        times) while it collides with a concurrent commit; ``what`` names it in the log."""
        return self._with_retries(what, lambda: self.fetchall(sql, params, on=on))

    def _stored_data_path(self) -> str | None:
        rows = self.fetchall(
            f"SELECT value FROM __ducklake_metadata_{self.alias}.ducklake_metadata WHERE key = 'data_path'"
        )
        return str(rows[0][0]) if rows and rows[0][0] else None

    def _with_retries(self, what: str, action: Callable[[], T]) -> T:
        delay = 0.05
        jitter = np.random.default_rng()
        for attempt in range(self._retries + 1):
            try:
                return action()
            except DuckstreamError as exc:
                if attempt == self._retries or not _commit_conflict(exc):
                    raise
                log.info("commit conflict while trying to %s; retry %d", what, attempt + 1)
                time.sleep(delay * (1 + jitter.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    @contextmanager
    def exclusive_append(self, table: str) -> Iterator[None]:
        """Hold the lock on appends into ``table`` that read it first (to skip the keys it holds).

        DuckLake lets concurrent inserts into one table commit side by side (it checks them
        against drops, schema changes and deletes, not against each other), so two such appends
        would both add the keys neither saw. On PostgreSQL a session advisory lock holds off the
        appends of every process; a DuckDB-file catalog has one writing process, and in it one
        catalog, whose own lock holds off its threads.
        """
        parts = [p.lower() for p in table.split(".")]
        name = ".".join(parts if len(parts) == 2 else ["main", *parts])
        with self._append_locks_guard:
            local = self._append_locks.setdefault(name, threading.Lock())
        with local:
            if self.location.kind != "postgres":
                yield
                return
            with self._advisory_lock(name):
                yield

    @contextmanager
    def _advisory_lock(self, name: str) -> Iterator[None]:
        import psycopg

        digest = hashlib.sha256(f"duckstream append {name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        try:
            # Its own connection: the lock lasts exactly as long as that session, so a crashed
            # appender never leaves it taken.
            lock = psycopg.connect(self.location.target, autocommit=True, connect_timeout=30)
        except psycopg.Error as exc:
            text = redact(str(exc)).strip()
            if engine.credentials_refused(str(exc)):
                raise _credentials_error(self.location, text) from None
            raise CatalogError(f"could not lock table {name!r} for an append: {text}") from None
        with lock:
            row = lock.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
            if not (row and row[0]):
                log.info("waiting for another append into %s to finish", name)
                lock.execute("SELECT pg_advisory_lock(%s)", [key])
            yield

    def close(self) -> None:
        """Detach and close; closing twice is harmless."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __repr__(self) -> str:
        state = "closed" if self._con is None else "open"
        return f"LakehouseCatalog({self.location!r}, alias={self.alias!r}, {state})"

    # -- snapshots and tables --------------------------------------------------------------

    def current_snapshot(self) -> int:
        """The newest snapshot id of the catalog."""
        rows = self.fetchall(f"SELECT max(snapshot_id) FROM {self.alias}.snapshots()")
        return int(rows[0][0])

    def table(self, name: str, version: int | None = None) -> LakeTable:
        """Table ``name`` pinned to snapshot ``version`` (the current one when None)."""
        pinned = self.current_snapshot() if version is None else int(version)
        table = LakeTable(self.location, name, pinned, self._s3, self.alias, catalog=self)
        try:
            self.con.execute(f"SELECT * FROM {table.scan} LIMIT 0")
        except duckdb.Error as exc:
            text = redact(str(exc))
            if "snapshot" in text.lower():
                raise CatalogError(
                    f"table {name!r} has no snapshot {pinned}: {text.splitlines()[0]} "
                    f"(the newest is {self.current_snapshot()}; old snapshots may have been expired)"
                ) from None
            raise CatalogError(
                f"table {name!r} does not exist at snapshot {pinned}: {text.splitlines()[0]}"
            ) from None
        return table


def _attach_error(location: CatalogLocation, exc: DuckstreamError) -> DuckstreamError:
    """What to raise when the catalog cannot be attached: a clear CatalogError where one fits."""
    text = f"{exc} {getattr(exc, 'engine_message', '')}"
    lowered = text.lower()
    if "does not match existing data path" in lowered:
        stored = _STORED_DATA_PATH.search(text)
        kept = stored.group(1) if stored else "another data path"
        return CatalogError(
            f"{location.describe()} keeps its data files in {kept}, not in the data_path given "
            f"({location.data_path}): open it without data_path to use {kept}"
        )
    if "data_path is not set" in lowered:
        return ConfigurationError(
            f"{location.describe()} holds no DuckLake catalog yet, and a new one needs data_path "
            "(a folder or s3://bucket/prefix) for its files"
        )
    if "creating a new ducklake is explicitly disabled" in lowered or (
        location.kind == "duckdb" and "read-only mode: database does not exist" in lowered
    ):
        return CatalogError(f"{location.describe()} holds no DuckLake catalog to open read-only")
    if location.kind == "duckdb" and "unique file handle conflict" in lowered:
        return CatalogError(
            f"the catalog file {location.target} is already open for writing in this process (a "
            "DuckDB-file catalog allows one writer): use that LakehouseCatalog here too (its keyed "
            "appends take turns), close it first, or open this one with read_only=True"
        )
    if location.kind == "duckdb" and "lock" in lowered:
        return CatalogError(
            f"the catalog file {location.target} is open for writing in another process "
            "(a DuckDB-file catalog allows one writer): close it there, open this one "
            f"with read_only=True, or use a PostgreSQL catalog; DuckDB said: {exc}"
        )
    if location.kind == "postgres" and refused_credentials(exc):
        return _credentials_error(location, text)
    return exc


# How DuckLake names the data path a catalog stores when an ATTACH gives another.
_STORED_DATA_PATH = re.compile(r'existing data path in the catalog "([^"]*)"')


def _credentials_error(location: CatalogLocation, text: str) -> CatalogError:
    fatal = text.split("FATAL:", 1)[-1].split(" -- in statement")[0]
    reason = " ".join(fatal.split())
    return CatalogError(
        f"{_REFUSED} {location!r}: {reason}; check the user and password in the DSN (retrying cannot help)"
    )
