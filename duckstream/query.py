"""LakehouseQuery: SQL over Parquet on local disk or S3, with results as Arrow or pandas."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa

from duckstream import engine
from duckstream._closing import ClosesOnExit
from duckstream.core.source import SourceLike, parquet_patterns, read_parquet_sql
from duckstream.errors import ConfigurationError, DuckstreamError
from duckstream.storage import S3Settings

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LakehouseQuery", "QueryResult"]

DEFAULT_READER_BATCH_ROWS = 65_536

T = TypeVar("T")


class QueryResult:
    """The result of one statement; each ``to_*`` call runs it (DuckDB relations are lazy)."""

    def __init__(
        self,
        relation: duckdb.DuckDBPyRelation | None,
        statement: str,
        s3: S3Settings,
    ) -> None:
        self._relation = relation
        self.statement = statement
        self._s3 = s3

    @property
    def columns(self) -> list[str]:
        """Column names of the result (empty for statements that return nothing)."""
        return [] if self._relation is None else list(self._relation.columns)

    def to_arrow(self) -> pa.Table:
        """The whole result as a ``pyarrow.Table``."""
        if self._relation is None:
            return pa.table({})
        return self._run(lambda rel: rel.to_arrow_table())

    def to_pandas(self) -> pd.DataFrame:
        """The whole result as a ``pandas.DataFrame``."""
        if self._relation is None:
            import pandas as pd

            return pd.DataFrame()
        return self._run(lambda rel: rel.df())

    def to_arrow_reader(self, batch_size: int = DEFAULT_READER_BATCH_ROWS) -> pa.RecordBatchReader:
        """Stream the result as record batches of at most ``batch_size`` rows, bounded memory."""
        if self._relation is None:
            return pa.RecordBatchReader.from_batches(pa.schema([]), [])
        reader = self._run(lambda rel: rel.to_arrow_reader(batch_size))
        return pa.RecordBatchReader.from_batches(reader.schema, self._guarded(reader))

    def render(self) -> str:
        """The result as a text table (DuckDB's box rendering, long results elided)."""
        if self._relation is None:
            return "(no result)"
        return self._run(str)

    def fetchall(self) -> list[tuple[Any, ...]]:
        """The whole result as a list of tuples."""
        if self._relation is None:
            return []
        return self._run(lambda rel: rel.fetchall())

    def _run(self, fetch: Callable[[duckdb.DuckDBPyRelation], T]) -> T:
        assert self._relation is not None
        try:
            return fetch(self._relation)
        except duckdb.Error as exc:
            raise engine.query_error(exc, self.statement, s3=self._s3) from None

    def _guarded(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        # Errors may surface mid-stream (a corrupt row group, a dropped connection).
        try:
            yield from reader
        except duckdb.Error as exc:
            raise engine.query_error(exc, self.statement, s3=self._s3) from None

    def __repr__(self) -> str:
        return f"QueryResult(columns={self.columns!r})"


class LakehouseQuery(ClosesOnExit):
    """A DuckDB session for SQL over the lakehouse's Parquet files, local or on S3.

    S3 keywords default from the environment (``DUCKSTREAM_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``). The ducklake, httpfs and postgres extensions are loaded, so the
    SQL may also ``ATTACH`` DuckLake catalogs. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        s3_endpoint: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
        *,
        s3_region: str | None = None,
        s3_use_ssl: bool | None = None,
        database: str = ":memory:",
        read_only: bool = False,
        threads: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self._s3 = S3Settings.resolve(
            s3_endpoint, s3_access_key, s3_secret_key, region=s3_region, use_ssl=s3_use_ssl
        )
        self._database = database
        self._con: duckdb.DuckDBPyConnection | None = engine.connect(
            database,
            s3=self._s3,
            extensions=engine.ALL_EXTENSIONS,
            threads=threads,
            memory_limit=memory_limit,
            read_only=read_only,
        )

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The underlying DuckDB connection, for what this class does not wrap."""
        return self._connection()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        # What execute() runs on. Kept apart from `con` so that a subclass can withhold the
        # connection from its users (a read-only engine) and still run statements on it.
        if self._con is None:
            raise DuckstreamError("this LakehouseQuery is closed; open a new one")
        return self._con

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> QueryResult:
        """Run ``sql`` (one or more statements); the last statement's result is returned."""
        if not isinstance(sql, str) or not sql.strip():
            raise ConfigurationError(f"expected a SQL statement, found {sql!r}")
        try:
            relation = self._connection().sql(sql, params=params)
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql, s3=self._s3) from None
        return QueryResult(relation, sql, self._s3)

    def register_source(self, source: SourceLike, name: str = "source") -> list[str]:
        """Create a view ``name`` over a source's Parquet files; return the patterns it reads."""
        if not name.isidentifier():
            raise ConfigurationError(f"view name must be an identifier, found {name!r}")
        patterns = parquet_patterns(source)
        self.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS SELECT * FROM {read_parquet_sql(patterns)}')
        return patterns

    def close(self) -> None:
        """Close the connection; further calls raise. Closing twice is harmless."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __repr__(self) -> str:
        state = "closed" if self._con is None else "open"
        return f"LakehouseQuery(database={self._database!r}, s3={self._s3!r}, {state})"
