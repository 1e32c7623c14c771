"""``count="skip"``: a filtered source planned on its source rows, its SQL run on each batch.

Planning a filter exactly counts, per shard, the rows that pass it: a pass over the
predicate's columns of every file before the first batch. With ``count="skip"`` a row-wise
query (a WHERE and a projection of each row's own values) is planned as if it had no filter:
shards count source rows (from the Parquet footers), and the partition, shuffle windows, read
order, ``even`` and saved states all work on source rows, unchanged. The read carries the
source columns the query names, and the query runs, through :class:`BatchSQL`, on each batch
the read hands on (after the shuffle and rebatching): a batch of ``batch_size`` source rows
becomes the rows of it that pass. Batches vary in size and may be empty; every batch is
yielded, empty or not, so each rank yields the same number of items and ``len()`` and
resumption stay exact.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import duckdb
import pyarrow as pa

from duckstream import engine
from duckstream.core.batch_sql import BatchQuery, BatchSQL, output_schema, split_query
from duckstream.core.sql import SOURCE, QueryShape
from duckstream.errors import ConfigurationError
from duckstream.redact import redact

if TYPE_CHECKING:
    from duckstream.core.planning import StreamPlan

__all__ = ["COUNTS", "Count", "LateQuery", "check_count", "filtered", "late_query", "reading"]

# How a filtered source's rows are planned: counted exactly, or not counted at all.
Count = Literal["exact", "skip"]
COUNTS: tuple[str, ...] = ("exact", "skip")


@dataclass(frozen=True)
class LateQuery:
    """The SQL of a plan made with ``count="skip"``: run on each batch after the shuffle.

    ``read_schema``: the source columns the read carries, every one the query names.
    """

    batch: BatchQuery
    read_schema: pa.Schema

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.read_schema.names)

    @property
    def read_query(self) -> str:
        """The read as SQL, for files DuckDB reads itself (a lake table's inlined rows)."""
        quoted = ('"' + c.replace('"', '""') + '"' for c in self.columns)
        return f"SELECT {', '.join(quoted)} FROM source"


def check_count(count: str) -> None:
    if count not in COUNTS:
        raise ConfigurationError(f"count must be 'exact' or 'skip', found {count!r}")


def late_query(
    con: duckdb.DuckDBPyConnection, query: str | None, shape: QueryShape, source_schema: pa.Schema
) -> tuple[LateQuery, pa.Schema] | None:
    """For ``count="skip"``: the query to run on each batch, and its output schema; None when
    the query keeps every source row (no filter: counts come from the footers anyway).

    Raises :class:`ConfigurationError` for a query that cannot run batch by batch.
    """
    if query is None or shape.keeps_rows:
        return None
    statement = redact(" ".join(query.split()))[:200]
    extra = sorted(_operators(query, source_schema) - _ROW_WISE)
    if extra:
        why = (
            "it unnests (UNNEST yields several rows per source row)"
            if "UNNEST" in extra
            else f"it needs more than one row at a time (DuckDB plans it with {', '.join(extra)}: an "
            "aggregate, DISTINCT, ORDER BY, LIMIT, a join, a subquery or a window function)"
        )
        raise ConfigurationError(
            "count='skip' runs the SQL on each batch of source rows after the shuffle, so it must "
            f"be row-wise (a WHERE and expressions of each row's own columns), but {why}; use "
            f"count='exact' (the default) -- in statement: {statement}"
        )
    try:
        batch = split_query(con, query, source_schema, keeps_rows=False, positions=True)
        schema = output_schema(query, batch, source_schema)
    except (duckdb.Error, pa.ArrowException, ValueError) as exc:
        raise ConfigurationError(
            "count='skip' runs the SQL on decoded Arrow batches, which DuckDB cannot do for this "
            f"source ({redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__}); use "
            f"count='exact' (the default) -- in statement: {statement}"
        ) from None
    named = {*batch.reads, *batch.wide}
    # A query that names no column still needs rows to run on.
    columns = [c for c in source_schema.names if c in named] or source_schema.names[:1]
    return LateQuery(batch, pa.schema([source_schema.field(c) for c in columns])), schema


def reading(plan: StreamPlan) -> StreamPlan:
    """The plan the read itself follows: the columns the late query names, no query."""
    late = plan.late
    if late is None:
        return plan
    read = dataclasses.replace(plan, schema=late.read_schema, query=late.read_query, late=None)
    # The same shards and counts: the read order is the plan's, not worked out again.
    read.__dict__["layout"] = plan.layout
    read.__dict__["_orders"] = plan._orders
    return read


def filtered(plan: StreamPlan, batches: Iterator[pa.RecordBatch]) -> Generator[pa.RecordBatch, None, None]:
    """Each batch of the read through the plan's late query: one batch out (maybe empty) per
    batch in, so items still count source rows."""
    late = plan.late
    if late is None:
        yield from batches
        return
    sql = BatchSQL(late.batch, plan.schema)
    held: list[pa.RecordBatch] = []
    rows = size = 0
    try:
        for batch in batches:
            held.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if rows >= GROUP_ROWS or size >= GROUP_BYTES:
                yield from sql.each_of(held)
                held, rows, size = [], 0, 0
        yield from sql.each_of(held)
    finally:
        if isinstance(batches, Generator):
            batches.close()
        sql.close()


# Source rows the SQL runs over at once, at most: the batches of that many (or of that many
# bytes) go through one DuckDB run, cut back into one output batch per batch (a run costs about
# a millisecond whatever its rows). Batches are held until then: bytes bound the memory.
GROUP_ROWS = 16_384
GROUP_BYTES = 16 * 1024 * 1024

# The operators of a query that runs on each batch alone: one output row per input row at most.
_ROW_WISE = frozenset({"ARROW_SCAN", "ARROW_SCAN_DUMB", "PROJECTION", "FILTER", "EMPTY_RESULT"})


def _operators(query: str, source_schema: pa.Schema) -> set[str]:
    """The operators DuckDB plans ``query`` with over a batch of ``source_schema`` (as it runs
    under count="skip"): a batch has no statistics that could prune a filter to nothing."""
    with duckdb.connect() as own:
        own.register(SOURCE, source_schema.empty_table())
        try:
            rows = own.execute(f"EXPLAIN (FORMAT json) {query}").fetchall()
        except duckdb.Error as exc:
            raise engine.query_error(exc, query) from None
    found: set[str] = set()
    stack = list(json.loads(rows[0][1]))
    while stack:
        node = stack.pop()
        found.add(str(node["name"]))
        stack.extend(node.get("children", []))
    return found
