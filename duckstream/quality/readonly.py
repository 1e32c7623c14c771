"""A SQL session that can only read the sources it was given, with a row and a time limit.

Read-only by construction: the session's own DuckDB database holds one view per source; then
file access is restricted to exactly those sources' files (``allowed_paths`` with
``enable_external_access = false``; for a lake table, its data and delete files at its
snapshot), extension loading is off and
the configuration is locked, so no statement can undo it. On top of that every statement is
parsed by DuckDB itself: one SELECT at a time, naming only the source views. Every refusal is a
:class:`~duckstream.errors.RefusedStatementError` whose message says what to do instead.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import duckdb
from pydantic import BaseModel

from duckstream import engine
from duckstream._closing import ClosesOnExit
from duckstream.core.planning import Source
from duckstream.errors import ConfigurationError, QueryError, RefusedStatementError
from duckstream.quality.sources import SourceAccess, open_source, quote_identifier
from duckstream.quality.values import jsonable
from duckstream.query import LakehouseQuery
from duckstream.storage import S3Settings

__all__ = ["DEFAULT_MAX_ROWS", "DEFAULT_TIMEOUT_S", "ReadOnlySession", "SQLAnswer", "source_accesses"]

DEFAULT_MAX_ROWS = 200
DEFAULT_TIMEOUT_S = 10.0
# Schemas a view name may be qualified with.
_OWN_SCHEMAS = ("", "main.", "memory.main.", "temp.", "temp.main.", "memory.")


class SQLAnswer(BaseModel):
    """Rows of a read-only query, cut at the session's row limit."""

    columns: list[str]
    rows: list[dict[str, Any]]
    truncated: bool
    row_limit: int


def source_accesses(sources: Mapping[str, Source], s3: S3Settings) -> dict[str, SourceAccess]:
    """How to read each named source from another connection (files listed, lakes located)."""
    accesses = {}
    for name, source in sources.items():
        if not name.isidentifier():
            raise ConfigurationError(f"a source name must be an identifier, found {name!r}")
        with open_source(source, s3, elsewhere=True) as (_, access):
            accesses[name] = access
    return accesses


class ReadOnlySession(ClosesOnExit):
    """SQL over named sources that cannot write, change settings or read anything else.

    ``engine`` is the locked :class:`LakehouseQuery`; :meth:`run` is the guarded way in.
    """

    def __init__(
        self,
        accesses: Mapping[str, SourceAccess],
        engine_query: LakehouseQuery,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if max_rows < 1:
            raise ConfigurationError(f"max_rows must be at least 1, found {max_rows}")
        if timeout_s <= 0:
            raise ConfigurationError(f"timeout_s must be positive, found {timeout_s}")
        self.engine = engine_query
        self.sources = tuple(accesses)
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        self._allowed = {f"{schema}{name}".lower() for name in accesses for schema in _OWN_SCHEMAS}
        _lock_down(engine_query.con, accesses)
        # Naming the tables a statement reads binds its table functions: do it where nothing exists
        # and no file can be opened.
        self._parser = duckdb.connect(
            ":memory:",
            config={
                "enable_external_access": False,
                "autoload_known_extensions": False,
                "autoinstall_known_extensions": False,
                "lock_configuration": True,
            },
        )

    def run(self, sql: str) -> SQLAnswer:
        """Rows of one SELECT over the sources; refuses anything else with a readable reason."""
        statement = self._check(sql)
        # A cursor per query: tools may run in parallel threads, and an interrupt stops only this one.
        con = self.engine.con.cursor()
        timer = threading.Timer(self.timeout_s, con.interrupt)
        timer.start()
        try:
            reader = con.sql(statement).to_arrow_reader(min(self.max_rows + 1, 65_536))
            rows: list[dict[str, Any]] = []
            for batch in reader:
                rows += batch.slice(0, self.max_rows + 1 - len(rows)).to_pylist()
                if len(rows) > self.max_rows:
                    break
            columns = list(reader.schema.names)
        except duckdb.InterruptException:
            raise self._refuse(
                sql,
                f"the query ran longer than the limit of {self.timeout_s:g} s and was stopped; "
                "filter, aggregate or sample the data to make it cheaper",
            ) from None
        except duckdb.PermissionException as exc:
            raise self._refuse(sql, _outside(exc, self.sources)) from None
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql) from None
        finally:
            timer.cancel()
            con.close()
        truncated = len(rows) > self.max_rows
        return SQLAnswer(
            columns=columns,
            rows=[{k: jsonable(v) for k, v in row.items()} for row in rows[: self.max_rows]],
            truncated=truncated,
            row_limit=self.max_rows,
        )

    def _check(self, sql: str) -> str:
        if not isinstance(sql, str) or not sql.strip():
            raise self._refuse(str(sql), "expected one SELECT statement, found nothing")
        try:
            statements = duckdb.extract_statements(sql)
        except Exception as exc:  # the parser raises IndexError too on some inputs
            raise self._refuse(sql, f"the statement does not parse: {_first_line(exc)}") from None
        if len(statements) != 1:
            raise self._refuse(sql, f"send one statement at a time; found {len(statements)}")
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise self._refuse(
                sql,
                f"only SELECT queries are allowed here (this session is read-only); found: {kind.name}",
            )
        try:
            with self._parser.cursor() as parser:
                tables = parser.get_table_names(sql, qualified=True)
        except duckdb.PermissionException as exc:
            raise self._refuse(sql, _outside(exc, self.sources)) from None
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql) from None
        foreign = sorted(t for t in tables if t.replace('"', "").lower() not in self._allowed)
        if foreign:
            raise self._refuse(
                sql,
                f"it reads {', '.join(foreign)}, which is not a source of this session; "
                f"the sources are: {', '.join(self.sources)}",
            )
        return sql

    def _refuse(self, sql: str, reason: str) -> RefusedStatementError:
        return RefusedStatementError(f"refused: {reason}", statement=sql)

    def close(self) -> None:
        self.engine.close()
        self._parser.close()


def _lock_down(con: duckdb.DuckDBPyConnection, accesses: Mapping[str, SourceAccess]) -> None:
    """Create the views, then take away every way out: files, extensions, settings."""
    setups: dict[str, None] = {}
    for access in accesses.values():
        setups.update(dict.fromkeys(access.setup))
    paths = sorted({p for a in accesses.values() for p in a.paths})
    statements = [
        *setups,
        *(
            f"CREATE VIEW {quote_identifier(name)} AS SELECT * FROM {access.scan}"
            for name, access in accesses.items()
        ),
        f"SET allowed_paths = [{', '.join(engine.sql_literal(p) for p in paths)}]",
        "SET allowed_directories = []",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ]
    for statement in statements:
        try:
            con.execute(statement)
        except duckdb.Error as exc:
            raise engine.query_error(exc, statement) from None
    for name in accesses:
        probe = f"SELECT * FROM {quote_identifier(name)} LIMIT 0"
        try:
            con.execute(probe)
        except duckdb.Error as exc:
            raise QueryError(
                f"source {name!r} cannot be read in a read-only session: {_first_line(exc)}",
                statement=probe,
            ) from None


def _outside(exc: duckdb.Error, sources: tuple[str, ...]) -> str:
    return (
        f"it reaches outside the session's sources ({_first_line(exc)}); query only the views "
        f"{', '.join(sources)}, with no file, extension or setting access"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
