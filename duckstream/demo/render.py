"""Plain-text box tables for the walkthrough: one line per row, every cell whole.

DuckDB's own rendering wraps a table wider than 120 characters inside its cells, which breaks
paths and words mid-name; here a wide cell widens its column instead, and the sections keep
their cells short.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

__all__ = ["box_table"]


def box_table(table: pa.Table, *, max_rows: int = 40) -> str:
    """``table`` as a box of its column names and rows; numbers right-aligned, rows past
    ``max_rows`` counted in a last line."""
    names = table.column_names
    rows = [[_cell(value) for value in row.values()] for row in table.slice(0, max_rows).to_pylist()]
    numeric = [
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        for t in table.schema.types
    ]
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]

    def rule(left: str, middle: str, right: str) -> str:
        return left + middle.join("─" * (width + 2) for width in widths) + right

    def line(cells: list[str], *, header: bool = False) -> str:
        shown = [
            cell.center(width) if header else cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ]
        return "│" + "│".join(f" {cell} " for cell in shown) + "│"

    lines = [rule("┌", "┬", "┐"), line(names, header=True), rule("├", "┼", "┤")]
    lines += [line(row) for row in rows]
    lines.append(rule("└", "┴", "┘"))
    if table.num_rows > max_rows:
        lines.append(f"({table.num_rows - max_rows:,} more rows)")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
