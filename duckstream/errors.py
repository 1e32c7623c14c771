"""The one exception tree of duckstream.

::

    DuckstreamError                      every error duckstream raises on purpose
    ├── ConfigurationError (ValueError)  an argument or environment setting is invalid
    ├── MissingDependencyError (ImportError)
    │                                    an optional package is absent; names the pip extra
    ├── ExtensionError                   a DuckDB extension could not be loaded
    ├── SourceError                      a source names no readable Parquet files, files
    │                                    whose schemas conflict, or a file whose data cannot be
    │                                    read; names the file and column
    │   └── StoreUnavailableError        the object store did not answer for an object within
    │                                    the retry deadline; names the object and the wait
    ├── StateError                       a saved loader state does not fit this dataset
    ├── CatalogError                     a lakehouse catalog refused: no such table, snapshot,
    │                                    run or experiment, or its files are gone
    ├── CollateError (ValueError)        a batch cannot become tensors (e.g. a null integer)
    ├── ServiceError                     a test/dev service (S3 server, PostgreSQL) failed to start
    ├── SyncError                        an ingest could not load its dataset or write its files
    └── QueryError                       DuckDB rejected or failed a statement; names the statement
        ├── S3AccessError                and the file at fault; S3 refused the credentials
        └── RefusedStatementError        a read-only SQL session refused a statement (a write,
                                         a setting, a read outside its sources, a time limit)

Messages say what was expected, what was found and what to do, and never contain a secret:
everything that reaches a message passes through :func:`duckstream.redact.redact`.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "CatalogError",
    "CollateError",
    "ConfigurationError",
    "DuckstreamError",
    "ExtensionError",
    "MissingDependencyError",
    "QueryError",
    "RefusedStatementError",
    "S3AccessError",
    "ServiceError",
    "SourceError",
    "StateError",
    "StoreUnavailableError",
    "SyncError",
]


class DuckstreamError(Exception):
    """Base class of every error duckstream raises on purpose."""


class ConfigurationError(DuckstreamError, ValueError):
    """An argument or environment setting is invalid."""


class MissingDependencyError(DuckstreamError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


class ExtensionError(DuckstreamError):
    """A DuckDB extension could not be loaded from its pip package nor installed by DuckDB."""


class SourceError(DuckstreamError):
    """A source does not resolve to readable Parquet files."""


class StoreUnavailableError(SourceError):
    """The object store did not answer for an object (outage, reset connections, 5xx answers)
    until the retry deadline (``DUCKSTREAM_S3_RETRY_SECONDS``) passed."""


class CatalogError(DuckstreamError):
    """The lakehouse catalog has no such table, snapshot, experiment or run, or lost files."""


class StateError(DuckstreamError):
    """A saved state was made by another plan, seed or version; the message says what differs."""


class CollateError(DuckstreamError, ValueError):
    """A batch cannot be turned into the requested output; the message names the column."""


class SyncError(DuckstreamError):
    """An ingest could not read its dataset or write its destination; nothing partial is left
    looking complete, and rerunning continues where it stopped."""


class ServiceError(DuckstreamError):
    """A local service (SeaweedFS S3, PostgreSQL) could not be started or did not answer."""


class QueryError(DuckstreamError):
    """DuckDB failed a statement.

    ``statement`` is the SQL at fault and ``files`` the files the engine named, both redacted;
    ``engine_message`` is DuckDB's full (redacted) message, of which ``str()`` shows the first line.
    """

    def __init__(
        self,
        message: str,
        *,
        statement: str,
        files: tuple[str, ...] = (),
        engine_message: str = "",
        credentials_refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.statement = statement
        self.files = files
        self.engine_message = engine_message
        # Judged on the engine's own words: a secret masked inside them could hide the reason.
        self.credentials_refused = credentials_refused

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt with its keyword-only fields, so the error crosses processes whole.
        rebuild = functools.partial(
            type(self),
            statement=self.statement,
            files=self.files,
            engine_message=self.engine_message,
            credentials_refused=self.credentials_refused,
        )
        return rebuild, self.args


class S3AccessError(QueryError):
    """The S3 store refused the request: wrong or missing credentials, or no permission."""


class RefusedStatementError(QueryError):
    """A read-only SQL session refused a statement; the message says why, for a person or a model."""
