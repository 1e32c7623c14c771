"""Reading DuckDB query plans in tests: which filters ran inside which scan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol


class Runs(Protocol):
    """A LakehouseQuery or a DuckDB connection: anything whose execute() can fetchall()."""

    def execute(self, sql: str) -> Any: ...


def plan_nodes(query: Runs, sql: str) -> list[dict[str, Any]]:
    """Every operator of the physical plan of ``sql``, depth first."""
    rows = query.execute(f"EXPLAIN (FORMAT json) {sql}").fetchall()
    roots = json.loads(rows[0][1])

    def walk(nodes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for node in nodes:
            yield node
            yield from walk(node.get("children", []))

    return list(walk(roots))


def scan_filters(query: Runs, sql: str) -> list[str]:
    """The filters pushed into the plan's table/Parquet scans."""
    filters: list[str] = []
    for node in plan_nodes(query, sql):
        if "SCAN" in node["name"] or "READ_PARQUET" in node["name"]:
            pushed = node.get("extra_info", {}).get("Filters", [])
            filters.extend([pushed] if isinstance(pushed, str) else pushed)
    return filters
