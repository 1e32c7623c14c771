"""A SQL session that can only read the sources it was given, with a row and a time limit.

Read-only by construction: the session's own DuckDB database holds one view per source; then
file access is restricted to exactly those sources' files and the paths, globs or ``s3://`` URIs
that name them (``allowed_paths`` with ``enable_external_access = false``: DuckDB lists a glob
only if the pattern itself is allowed, then opens only the matches that are; for a lake table, its
data and delete files at its snapshot), extension loading is off and the configuration is
locked, so no statement can undo it.

DuckDB's allowlist cannot tell reading a file from writing it, so the engine's ``execute`` takes
SELECT statements only. The session's :meth:`~ReadOnlySession.run` goes further: each statement
is parsed and bound by DuckDB itself, in an empty database with the same file access: one SELECT
at a time, naming only the source views (or the sources' own paths). Every refusal is a
:class:`~duckstream.errors.RefusedStatementError` whose message says what to do instead.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
from pydantic import BaseModel

from duckstream import engine
from duckstream._closing import ClosesOnExit
from duckstream.core.planning import Source
from duckstream.core.source import is_remote
from duckstream.errors import ConfigurationError, QueryError, RefusedStatementError
from duckstream.quality.sources import SourceAccess, open_source, quote_identifier
from duckstream.quality.values import jsonable
from duckstream.query import LakehouseQuery, QueryResult
from duckstream.storage import S3Settings

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_TIMEOUT_S",
    "ReadOnlyQuery",
    "ReadOnlySession",
    "SQLAnswer",
    "source_accesses",
]

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


class ReadOnlyQuery(LakehouseQuery):
    """The engine of a :class:`ReadOnlySession`, whose connection the session locks.

    :meth:`execute` takes SELECT statements only (one or several; DESCRIBE, SHOW and SUMMARIZE
    are SELECTs). :attr:`con` is refused: DuckDB confines the connection to the sources' files,
    but reading one and overwriting it are the same permission there, so whoever held the
    connection could run ``COPY ... TO`` a source file.
    """

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        raise _refusal(
            "(the engine's DuckDB connection)",
            "this engine is read-only and gives out no DuckDB connection, through which a source "
            "file could be overwritten; run SELECT statements with execute()",
        )

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> QueryResult:
        if isinstance(sql, str) and sql.strip():
            for statement in _parse(sql):
                _refuse_unless_select(sql, statement, "this engine is read-only")
        return super().execute(sql, params)


class ReadOnlySession(ClosesOnExit):
    """SQL over named sources that cannot write, change settings or read anything else.

    ``engine`` is the locked :class:`ReadOnlyQuery`; :meth:`run` is the guarded way in. ``s3``
    is what the statement check needs to open the sources' ``s3://`` files by their own URIs.
    """

    def __init__(
        self,
        accesses: Mapping[str, SourceAccess],
        engine_query: ReadOnlyQuery,
        *,
        s3: S3Settings | None = None,
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
        self._patterns = sorted({p for a in accesses.values() for p in a.patterns})
        paths = sorted({*self._patterns, *(p for a in accesses.values() for p in a.paths)})
        self._paths = frozenset(paths)
        # The session locks the connection itself; its users get only the engine's execute().
        _lock_down(engine_query._connection(), accesses, paths)
        # Naming the tables a statement reads binds its table functions: do it where nothing exists
        # and no file but the sources' can be opened (by their own URIs, hence S3 access).
        remote = any(is_remote(p) for p in paths)
        self._parser = engine.connect(s3=s3, extensions=("httpfs",) if remote else ())
        try:
            _restrict(self._parser, paths)
        except BaseException:
            self._parser.close()
            raise

    def run(self, sql: str) -> SQLAnswer:
        """Rows of one SELECT over the sources; refuses anything else with a readable reason."""
        # Cursors per query: tools may run in parallel threads, and an interrupt stops only this
        # one. The limit covers the check too: binding a read of s3:// files reads their footers.
        con = self.engine._connection().cursor()
        parser = self._parser.cursor()

        def stop() -> None:
            parser.interrupt()
            con.interrupt()

        timer = threading.Timer(self.timeout_s, stop)
        timer.start()
        try:
            statement = self._check(sql, parser)
            reader = con.sql(statement).to_arrow_reader(min(self.max_rows + 1, 65_536))
            rows: list[dict[str, Any]] = []
            for batch in reader:
                rows += batch.slice(0, self.max_rows + 1 - len(rows)).to_pylist()
                if len(rows) > self.max_rows:
                    break
            columns = list(reader.schema.names)
        except duckdb.InterruptException:
            raise _refusal(
                sql,
                f"the query ran longer than the limit of {self.timeout_s:g} s and was stopped; "
                "filter, aggregate or sample the data to make it cheaper",
            ) from None
        except duckdb.PermissionException as exc:
            raise _refusal(sql, self._outside(exc)) from None
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql) from None
        finally:
            timer.cancel()
            con.close()
            parser.close()
        truncated = len(rows) > self.max_rows
        return SQLAnswer(
            columns=columns,
            rows=[{k: jsonable(v) for k, v in row.items()} for row in rows[: self.max_rows]],
            truncated=truncated,
            row_limit=self.max_rows,
        )

    def _check(self, sql: str, parser: duckdb.DuckDBPyConnection) -> str:
        if not isinstance(sql, str) or not sql.strip():
            raise _refusal(str(sql), "expected one SELECT statement, found nothing")
        statements = _parse(sql)
        if len(statements) != 1:
            raise _refusal(sql, f"send one statement at a time; found {len(statements)}")
        _refuse_unless_select(sql, statements[0], "this session is read-only")
        try:
            tables = parser.get_table_names(sql, qualified=True)
        except duckdb.InterruptException:
            raise
        except duckdb.PermissionException as exc:
            raise _refusal(sql, self._outside(exc)) from None
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql) from None
        foreign = sorted(t for t in tables if not self._is_source(t))
        if foreign:
            raise _refusal(
                sql,
                f"it reads {', '.join(foreign)}, which is not a source of this session; "
                f"the sources are: {', '.join(self.sources)}",
            )
        return sql

    def _is_source(self, table: str) -> bool:
        """A source view, or (``FROM 'path'``) one of the sources' own paths or patterns."""
        if table.replace('"', "").lower() in self._allowed:
            return True
        quoted = len(table) > 1 and table[0] == table[-1] == '"'
        return quoted and table[1:-1].replace('""', '"') in self._paths

    def _outside(self, exc: duckdb.Error) -> str:
        named = f" or by their paths ({', '.join(self._patterns)})" if self._patterns else ""
        return (
            f"it reaches outside the session's sources ({_first_line(exc)}); read only the sources, "
            f"as the views {', '.join(self.sources)}{named}, with no other file, extension or "
            "setting access"
        )

    def close(self) -> None:
        self.engine.close()
        self._parser.close()


def _parse(sql: str) -> list[duckdb.Statement]:
    try:
        return duckdb.extract_statements(sql)
    except Exception as exc:  # the parser raises IndexError too on some inputs
        raise _refusal(sql, f"the statement does not parse: {_first_line(exc)}") from None


def _refuse_unless_select(sql: str, statement: duckdb.Statement, why: str) -> None:
    if statement.type != duckdb.StatementType.SELECT:
        raise _refusal(sql, f"only SELECT queries are allowed here ({why}); found: {statement.type.name}")


def _refusal(sql: str, reason: str) -> RefusedStatementError:
    return RefusedStatementError(f"refused: {reason}", statement=sql)


def _lock_down(
    con: duckdb.DuckDBPyConnection, accesses: Mapping[str, SourceAccess], paths: Sequence[str]
) -> None:
    """Create the views, then take away every way out: files, extensions, settings."""
    setups: dict[str, None] = {}
    for access in accesses.values():
        setups.update(dict.fromkeys(access.setup))
    statements = [
        *setups,
        *(
            f"CREATE VIEW {quote_identifier(name)} AS SELECT * FROM {access.scan}"
            for name, access in accesses.items()
        ),
    ]
    for statement in statements:
        try:
            con.execute(statement)
        except duckdb.Error as exc:
            raise engine.query_error(exc, statement) from None
    _restrict(con, paths)
    for name in accesses:
        probe = f"SELECT * FROM {quote_identifier(name)} LIMIT 0"
        try:
            con.execute(probe)
        except duckdb.Error as exc:
            raise QueryError(
                f"source {name!r} cannot be read in a read-only session: {_first_line(exc)}",
                statement=probe,
            ) from None


def _restrict(con: duckdb.DuckDBPyConnection, paths: Sequence[str]) -> None:
    """Allow ``paths`` (files, and globs whose every match is one of them) and nothing else; no
    extension loading; then lock the configuration so no statement can undo it."""
    for statement in (
        f"SET allowed_paths = [{', '.join(engine.sql_literal(p) for p in paths)}]",
        "SET allowed_directories = []",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        try:
            con.execute(statement)
        except duckdb.Error as exc:
            raise engine.query_error(exc, statement) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
