"""LakehouseDeps: what the quality agent's tools may read, and the read-only engine they read with."""

from __future__ import annotations

from collections.abc import Mapping

from duckstream._closing import ClosesOnExit
from duckstream.core.planning import Source
from duckstream.errors import ConfigurationError, DuckstreamError
from duckstream.quality.profiling import DEFAULT_EXACT_THRESHOLD
from duckstream.quality.readonly import (
    DEFAULT_MAX_ROWS,
    DEFAULT_TIMEOUT_S,
    ReadOnlyQuery,
    ReadOnlySession,
    source_accesses,
)
from duckstream.quality.sources import describe_source
from duckstream.query import LakehouseQuery
from duckstream.storage import S3Settings

__all__ = ["LakehouseDeps"]


class LakehouseDeps(ClosesOnExit):
    """Named sources and S3 settings for the quality agent; opens its engine on first use.

    ``sources`` maps a name (the view the SQL tool sees) to a source: Parquet paths, globs,
    ``s3://`` URIs or a LakeTable. SQL reads a source by its name, or by the path, glob or URI
    given for it (a directory as ``<dir>/**/*.parquet``). ``max_rows`` and ``timeout_s`` bound
    every query the agent runs. :meth:`query_engine` is a :class:`LakehouseQuery` that can only
    read those sources.
    Close it (or use it as a context manager) to release the connections.
    """

    def __init__(
        self,
        s3_endpoint: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
        *,
        sources: Mapping[str, Source] | None = None,
        s3_region: str | None = None,
        s3_use_ssl: bool | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        threads: int | None = None,
        memory_limit: str | None = None,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
    ) -> None:
        self._s3_args = (s3_endpoint, s3_access_key, s3_secret_key)
        self._s3_region = s3_region
        self._s3_use_ssl = s3_use_ssl
        self.s3 = S3Settings.resolve(
            s3_endpoint, s3_access_key, s3_secret_key, region=s3_region, use_ssl=s3_use_ssl
        )
        self.sources: dict[str, Source] = dict(sources or {})
        for name in self.sources:
            if not name.isidentifier():
                raise ConfigurationError(f"a source name must be an identifier, found {name!r}")
        if max_rows < 1:
            raise ConfigurationError(f"max_rows must be at least 1, found {max_rows}")
        if timeout_s <= 0:
            raise ConfigurationError(f"timeout_s must be positive, found {timeout_s}")
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self.exact_threshold = exact_threshold
        self._threads = threads
        self._memory_limit = memory_limit
        self._session: ReadOnlySession | None = None
        self._closed = False

    def source(self, name: str) -> Source:
        """The source called ``name``; the error lists the names there are."""
        try:
            return self.sources[name]
        except KeyError:
            raise ConfigurationError(
                f"no source named {name!r}; the sources are: {', '.join(self.sources) or '(none)'}"
            ) from None

    def describe(self) -> dict[str, str]:
        """Each source name with what it reads."""
        return {name: describe_source(source) for name, source in self.sources.items()}

    def session(self) -> ReadOnlySession:
        """The read-only SQL session over the sources (opened on first use)."""
        if self._closed:
            raise DuckstreamError("these LakehouseDeps are closed; make new ones")
        if self._session is None:
            accesses = source_accesses(self.sources, self.s3)
            query = ReadOnlyQuery(
                *self._s3_args,
                s3_region=self._s3_region,
                s3_use_ssl=self._s3_use_ssl,
                threads=self._threads,
                memory_limit=self._memory_limit,
            )
            try:
                self._session = ReadOnlySession(
                    accesses, query, s3=self.s3, max_rows=self.max_rows, timeout_s=self.timeout_s
                )
            except BaseException:
                query.close()
                raise
        return self._session

    def query_engine(self) -> LakehouseQuery:
        """A LakehouseQuery whose connection sees the sources as views and cannot read anything
        else (its configuration is locked); its ``execute`` takes SELECT statements only."""
        return self.session().engine

    def close(self) -> None:
        """Close the engine; closing twice is harmless."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self._closed = True

    def __repr__(self) -> str:
        return f"LakehouseDeps(sources={self.describe()!r}, s3={self.s3!r})"
