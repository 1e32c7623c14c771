"""Rows a filtering (or unnesting) query yields in each row range of its files, in one pass.

Counting shard by shard ran one DuckDB query per shard (10,000 small files: 24 s). Here one
query reads only what the predicate needs (DuckDB pushes the projection and skips row groups
by their statistics), tags each output row with its file and row number, and an ASOF join
with the ranges' first rows counts them per range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from duckstream import engine
from duckstream.core import sql as sqlmod

__all__ = ["FILE", "ROW", "count_per_range", "counting_query"]

# Columns the counting view adds to `source`: which file a row is in, and its row number there.
FILE = "__duckstream_file"
ROW = "__duckstream_row"

_CARDINALITY_FUNCTIONS = frozenset({"unnest", "unlist", "generate_subscripts"})


def counting_query(con: duckdb.DuckDBPyConnection, query: str) -> str | None:
    """``query`` reduced to what decides how many rows it yields, plus ``FILE`` and ``ROW``.

    ``query`` is row-local, over ``source`` (a view ``con`` has). A single ``SELECT ... FROM
    source`` keeps only its select items that unnest (the others cannot change the row count);
    SELECTs nested over ``source`` (a ``WITH``, a subquery in ``FROM``) also pass ``FILE`` and
    ``ROW`` on through each inner level. None for any other shape.
    """
    try:
        return _reduce(con, query)
    except duckdb.Error:
        return None  # a statement DuckDB cannot write back from its tree: count shard by shard


def _reduce(con: duckdb.DuckDBPyConnection, query: str) -> str | None:
    tree = sqlmod.parse(con, query)
    select = sqlmod.single_select(tree)
    if select is not None:
        alias = select["from_table"].get("alias") or sqlmod.SOURCE
        select["select_list"] = [*_cardinality_items(select), *(_tag(name, alias) for name in (FILE, ROW))]
        return sqlmod.unparse(con, tree)
    statements = [] if tree.get("error") else tree.get("statements", [])
    if len(statements) != 1:
        return None
    outer = statements[0]["node"]
    if not _from_passes_tags(outer, {}):
        return None
    outer["select_list"] = [*_cardinality_items(outer), *(_tag(name) for name in (FILE, ROW))]
    reduced = sqlmod.unparse(con, tree)
    # Bound over a stand-in for the tagged source: a level the walk misjudged fails here, not
    # in the counting pass (which would stop the plan).
    con.execute(
        f"WITH source AS (SELECT *, NULL AS {FILE}, NULL AS {ROW} FROM source LIMIT 0) "
        f"SELECT {FILE}, {ROW} FROM ({reduced}) LIMIT 0"
    )
    return reduced


def _cardinality_items(select: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for item in select["select_list"] if _changes_cardinality(item)]


def _tag(name: str, relation: str | None = None) -> dict[str, Any]:
    """A select item that passes the tag column ``name`` on, qualified by ``relation`` if given."""
    names = [name] if relation is None else [relation, name]
    return {"class": "COLUMN_REF", "type": "COLUMN_REF", "alias": name, "column_names": names}


# A CTE's SELECT, and the CTEs its own FROM can name (those defined before it, and outside).
_Scope = dict[str, tuple[dict[str, Any], "_Scope"]]


def _passes_tags(node: dict[str, Any], ctes: _Scope) -> bool:
    """Make the SELECT ``node`` output ``FILE`` and ``ROW`` of the ``source`` rows it reads
    (rewritten in place); False where it cannot."""
    if not _from_passes_tags(node, ctes):
        return False
    # A bare star passes every column of the one relation a row-local level reads, tags too.
    if not any(_bare_star(item) for item in node["select_list"]):
        node["select_list"] = [*node["select_list"], *(_tag(name) for name in (FILE, ROW))]
    return True


def _from_passes_tags(node: dict[str, Any], ctes: _Scope) -> bool:
    """Make what the SELECT ``node`` reads from carry ``FILE`` and ``ROW``: ``source`` itself,
    or a CTE or subquery rewritten by :func:`_passes_tags` (each level reads one relation, so
    no node is reached twice)."""
    if node.get("type") != "SELECT_NODE" or node.get("modifiers") or node.get("group_expressions"):
        return False
    if node.get("having") or node.get("qualify") or node.get("sample"):
        return False
    for entry in node.get("cte_map", {}).get("map", []):
        # Not recursive: inside its own body a CTE's name is what it was outside.
        ctes = {**ctes, str(entry["key"]).lower(): (entry["value"]["query"]["node"], ctes)}
    table = node.get("from_table", {})
    if table.get("schema_name") or table.get("catalog_name") or table.get("sample"):
        return False
    if table.get("type") == "SUBQUERY":
        return _passes_tags(table["subquery"]["node"], ctes)
    if table.get("type") != "BASE_TABLE":
        return False
    name = str(table.get("table_name", "")).lower()
    if name in ctes:
        body, scope = ctes[name]
        return _passes_tags(body, scope)
    return name == sqlmod.SOURCE


def _bare_star(item: dict[str, Any]) -> bool:
    """``*`` or ``relation.*``, excluding, replacing or renaming nothing."""
    if item.get("class") != "STAR" or item.get("columns") or item.get("expr") is not None:
        return False
    return not any(
        item.get(key) for key in ("exclude_list", "replace_list", "rename_list", "qualified_exclude_list")
    )


def count_per_range(
    con: duckdb.DuckDBPyConnection,
    source: str,
    reduced: str,
    keys: Sequence[Any],
    starts: Sequence[int],
) -> np.ndarray:
    """Output rows of ``reduced`` (from :func:`counting_query`) in each range.

    Range ``i`` holds the rows of file ``keys[i]`` from row ``starts[i]`` up to the next range
    of that file; ranges of one file are sorted by start and the first starts at its first row.
    ``source`` is a query for the source rows with the ``FILE`` and ``ROW`` columns added.
    """
    bounds = pa.table(
        {
            "key": pa.array(list(keys)),
            "start": pa.array(list(starts), pa.int64()),
            "range": pa.array(np.arange(len(starts), dtype=np.int64)),
        }
    )
    counts = np.zeros(len(starts), dtype=np.int64)
    if not len(starts):
        return counts
    cursor = con.cursor()
    try:
        cursor.register("duckstream_ranges", bounds)
        rows = cursor.execute(
            f"WITH source AS ({source}), hits AS ({reduced}) "
            "SELECT r.range, count(*) FROM hits ASOF JOIN duckstream_ranges r "
            f"ON hits.{FILE} = r.key AND hits.{ROW} >= r.start GROUP BY r.range"
        ).fetchall()
    except duckdb.Error as exc:
        raise engine.query_error(exc, reduced) from None
    finally:
        cursor.close()
    for index, count in rows:
        counts[int(index)] = int(count)
    return counts


def _changes_cardinality(item: dict[str, Any]) -> bool:
    """Whether a select-list item can change how many rows the query yields."""
    return bool(sqlmod.called_functions(item) & _CARDINALITY_FUNCTIONS)
