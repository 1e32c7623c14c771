"""Column kinds: how a DuckDB type is profiled and which checks apply to it."""

from __future__ import annotations

import re

from duckstream.quality.report import ColumnKind

__all__ = ["is_integer", "kind_of"]

_NUMERIC = re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|REAL|DECIMAL.*)$")
_INTEGER = re.compile(r"^U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?$")
_TEMPORAL = re.compile(r"^(DATE|TIME.*|TIMESTAMP.*|INTERVAL)$")


def kind_of(duckdb_type: str) -> ColumnKind:
    """How a column of DuckDB type ``duckdb_type`` is profiled."""
    kind = duckdb_type.upper()
    if kind.endswith("]"):
        return "list"
    if _NUMERIC.match(kind):
        return "numeric"
    if kind == "BOOLEAN":
        return "boolean"
    if kind in ("VARCHAR", "JSON"):
        return "string"
    if kind == "BLOB":
        return "binary"
    if _TEMPORAL.match(kind):
        return "temporal"
    return "other"


def is_integer(duckdb_type: str) -> bool:
    return bool(_INTEGER.match(duckdb_type.upper()))
