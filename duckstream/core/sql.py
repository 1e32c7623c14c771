"""The user's SQL: naming the source, and whether it can run shard by shard.

A query is *row-local* when each output row depends on one source row only (projection,
expressions, WHERE, UNNEST): it runs per shard, in the workers. Anything else (LIMIT, ORDER BY,
GROUP BY, DISTINCT, joins, windows, aggregates) must see the whole source and runs once.
DuckDB itself decides, from the physical plan, not a keyword filter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from duckstream import engine
from duckstream.errors import ConfigurationError
from duckstream.redact import redact

__all__ = [
    "QueryShape",
    "analyse",
    "called_functions",
    "name_the_source",
    "parse",
    "single_select",
    "unparse",
]

SOURCE = "source"

_SCANS = frozenset({"READ_PARQUET", "PARQUET_SCAN", "TABLE_SCAN", "DUCKLAKE_SCAN"})
_ROW_LOCAL_OPERATORS = _SCANS | {"PROJECTION", "FILTER", "UNNEST"}
_MENTIONS_SOURCE = re.compile(rf"\b{SOURCE}\b", re.IGNORECASE)
# Functions whose value changes from one read to the next.
_VOLATILE = frozenset({"random", "uuid", "gen_random_uuid", "uuidv4", "uuidv7", "setseed", "nextval"})


@dataclass(frozen=True)
class QueryShape:
    """What the analysis found.

    ``row_local``: runs per shard. ``keeps_rows``: row-local and yields exactly one row per
    source row (no WHERE, no UNNEST), so row counts come from metadata. ``columns``: for a
    plain projection of source columns, their names (all of them for ``SELECT *``), which
    can be read without SQL. ``ordered``: the query ends in its own ORDER BY.
    """

    row_local: bool
    keeps_rows: bool
    columns: tuple[str, ...] | None
    ordered: bool


def name_the_source(sql: str, spellings: Sequence[str]) -> str:
    """``sql`` with ``read_parquet('<uri>')``/``'<uri>'`` for the source replaced by ``source``.

    Notebooks name the data by its URI; the reader swaps in one shard at a time through the
    name ``source``, so the query must use it.
    """
    for spelling in sorted(set(spellings), key=len, reverse=True):
        literal = re.escape(engine.sql_literal(spelling))
        call = rf"\b(?:read_parquet|parquet_scan)\s*\(\s*{literal}\s*\)"
        sql = re.sub(call, SOURCE, sql, flags=re.IGNORECASE)
        sql = re.sub(rf"(\bFROM\s+|\bJOIN\s+){literal}", rf"\g<1>{SOURCE}", sql, flags=re.IGNORECASE)
    if not _MENTIONS_SOURCE.search(sql):
        raise ConfigurationError(
            f"the SQL must read the data as `{SOURCE}` (or as read_parquet('<the source URI>')); "
            f"found: {' '.join(sql.split())[:200]}"
        )
    return sql


def shape_of(con: duckdb.DuckDBPyConnection, sql: str | None, source_columns: Sequence[str]) -> QueryShape:
    """:func:`analyse`'s answer, or for no SQL at all every source column as it is."""
    if sql is None:
        return QueryShape(row_local=True, keeps_rows=True, columns=tuple(source_columns), ordered=False)
    return analyse(con, sql, source_columns)


def analyse(con: duckdb.DuckDBPyConnection, sql: str, source_columns: Sequence[str]) -> QueryShape:
    """Bind ``sql`` against the ``source`` view of ``con`` and classify it.

    Binding happens here, in the main process, so a syntax error or an unknown column is
    reported before any worker starts.
    """
    _one_query(con, sql)
    try:
        rows = con.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])  # type: ignore[index]
    except duckdb.Error as exc:
        raise engine.query_error(exc, sql) from None
    volatile = sorted(called_functions(tree) & _VOLATILE)
    if volatile:
        raise ConfigurationError(
            f"the SQL calls {', '.join(f + '()' for f in volatile)}, which gives other rows on every "
            "read, so rows could not be counted or shared out exactly once; use a deterministic "
            f"expression instead, e.g. WHERE hash(id) % 10 < 5 -- in statement: {' '.join(sql.split())[:200]}"
        )
    nodes = list(_walk(json.loads(rows[0][1])))
    operators = {node["name"] for node in nodes}
    row_local = operators <= _ROW_LOCAL_OPERATORS and len(_statements(tree)) == 1
    scan_filters = any(node.get("extra_info", {}).get("Filters") for node in nodes if node["name"] in _SCANS)
    keeps_rows = row_local and not ({"FILTER", "UNNEST"} & operators) and not scan_filters
    select = _statements(tree)[0] if _statements(tree) else {}
    return QueryShape(
        row_local=row_local,
        keeps_rows=keeps_rows,
        columns=_plain_columns(select, source_columns) if keeps_rows else None,
        ordered=any(m.get("type") == "ORDER_MODIFIER" for m in select.get("modifiers", [])),
    )


def _one_query(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse SQL that is not exactly one query, before DuckDB runs any of it.

    ``EXPLAIN`` prefixes only the first of several statements, and DuckDB runs the others as
    they stand: a ``COPY ... TO`` among them would write its file during planning.
    """
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise engine.query_error(exc, sql) from None
    expected = f"expected one query, SELECT ... FROM {SOURCE}"
    if not statements:
        raise ConfigurationError(
            f"the SQL holds no statement, only blanks or comments, {expected} -- found: {_preview(sql)}"
        )
    if len(statements) > 1:
        texts = [_preview(s.query.strip().rstrip(";")) for s in statements]
        if not all(texts):
            # DuckDB expands some single statements (a PIVOT without an IN list) into several.
            raise ConfigurationError(
                f"the SQL expands into {len(statements)} statements, {expected}; a PIVOT must "
                f"list its values (PIVOT ... ON column IN (...)) -- in statement: {_preview(sql)}"
            )
        listed = "; ".join(f"({n}) {text}" for n, text in enumerate(texts[:5], 1))
        raise ConfigurationError(
            f"the SQL holds {len(statements)} statements, {expected}; "
            f"remove all but the query -- found: {listed}"
        )
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise ConfigurationError(
            f"the SQL is a statement of type {kind.name}, {expected}; the source is read, "
            f"never written or reconfigured -- in statement: {_preview(sql)}"
        )


def _preview(sql: str) -> str:
    return redact(" ".join(sql.split()))[:200]


def called_functions(tree: Any) -> set[str]:
    """Names of every function a parsed statement (or a part of one) calls."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class") == "FUNCTION" and isinstance(item.get("function_name"), str):
                found.add(item["function_name"].lower())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def parse(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``query`` (``json_serialize_sql``), to rewrite and write back."""
    try:
        row = con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
    except duckdb.Error as exc:
        raise engine.query_error(exc, query) from None
    assert row is not None
    tree: dict[str, Any] = json.loads(row[0])
    return tree


def unparse(con: duckdb.DuckDBPyConnection, tree: dict[str, Any]) -> str:
    """SQL text of a parse tree from :func:`parse`; raises ``duckdb.Error`` where DuckDB cannot."""
    row = con.execute("SELECT json_deserialize_sql(?)", [json.dumps(tree)]).fetchone()
    assert row is not None
    return str(row[0])


def single_select(tree: dict[str, Any]) -> dict[str, Any] | None:
    """The SELECT node of a tree that is one plain ``SELECT ... FROM source [WHERE ...]``.

    Only that shape is rewritten (its select list split, or reduced for counting): any other
    row-local statement runs as written.
    """
    statements = _statements(tree)
    if len(statements) != 1:
        return None
    select = statements[0]
    if select.get("type") != "SELECT_NODE" or select.get("cte_map", {}).get("map"):
        return None
    if select.get("modifiers") or select.get("group_expressions") or select.get("having"):
        return None
    table = select.get("from_table", {})
    if table.get("type") != "BASE_TABLE" or table.get("table_name", "").lower() != SOURCE:
        return None
    if table.get("schema_name") or table.get("catalog_name") or table.get("sample"):
        return None
    return select


def _walk(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for node in nodes:
        yield node
        yield from _walk(node.get("children", []))


def _statements(tree: dict[str, Any]) -> list[dict[str, Any]]:
    if tree.get("error"):
        return []
    return [s["node"] for s in tree.get("statements", [])]


def _plain_columns(select: dict[str, Any], source_columns: Sequence[str]) -> tuple[str, ...] | None:
    """Column names when the query is ``SELECT <columns or *> FROM source`` and nothing else."""
    if select.get("type") != "SELECT_NODE" or select.get("cte_map", {}).get("map"):
        return None
    table = select.get("from_table", {})
    if table.get("type") != "BASE_TABLE" or table.get("table_name", "").lower() != SOURCE:
        return None
    if table.get("alias") or table.get("schema_name") or table.get("sample"):
        return None
    names: list[str] = []
    for item in select.get("select_list", []):
        if (
            item["class"] == "STAR"
            and not any(
                item.get(k) for k in ("exclude_list", "replace_list", "rename_list", "expr", "relation_name")
            )
            and not item.get("columns")
        ):
            names.extend(source_columns)
        elif item["class"] == "COLUMN_REF" and len(item["column_names"]) == 1:
            column = item["column_names"][0]
            if item.get("alias") not in ("", column):
                return None
            names.append(column)
        else:
            return None
    if len(set(names)) != len(names) or not set(names) <= set(source_columns):
        return None
    return tuple(names)
