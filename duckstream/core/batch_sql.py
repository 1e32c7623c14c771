"""Row-local SQL run by DuckDB over Arrow batches that pyarrow decoded.

pyarrow decodes Parquet faster than DuckDB exports it, above all for wide values (10 KiB
images: about half the speed through DuckDB). So the reader decodes the columns a query
reads with pyarrow and DuckDB only evaluates the query on those batches in place. Columns the
query passes through unchanged (``SELECT image, ...``) never enter DuckDB: DuckDB returns the
position of each output row in its input batch alongside what it computed, and the passed
columns are sliced (or, after a ``WHERE`` or ``UNNEST``, taken) from the decoded batch.

:func:`split_query` plans this once, in the main process; :class:`BatchSQL` runs it in each
reader. DuckDB's fixed cost per query (about 3 ms here, registering the input and exporting
the result) is paid once per large batch of the columns it reads, while the passed columns
are decoded apart in batches of a few MiB, so that wide values never pile up.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Generator, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from duckstream import engine
from duckstream.core import kept_rows
from duckstream.core import sql as sqlmod
from duckstream.core.gather import take_views, viewable
from duckstream.core.interleave import DEFAULT_STREAMS

__all__ = ["BatchQuery", "BatchSQL", "output_schema", "split_query"]

SOURCE = sqlmod.SOURCE
# The column DuckDB sees that numbers the rows of its input.
POSITION = "__duckstream_position"

_Rows = TypeVar("_Rows", pa.RecordBatch, pa.Table)


@dataclass(frozen=True)
class BatchQuery:
    """How a row-local query runs over decoded batches.

    ``sql`` reads ``source`` (the decoded columns ``reads``, plus ``POSITION`` when
    ``passed`` is not empty). Output column ``i`` is the decoded column ``passed[i]`` when
    that is set, else the next column of DuckDB's result. ``keeps_rows``: output row k is
    input row k, so passed columns are slices, not takes.
    """

    sql: str
    reads: tuple[str, ...]  # source columns DuckDB needs
    passed: tuple[str | None, ...]  # per output column: the source column it passes through
    keeps_rows: bool
    statement: str  # the user's query, which errors name
    source: pa.Schema | None = None  # the source's columns, as pyarrow decodes them

    @property
    def wide(self) -> tuple[str, ...]:
        """Passed columns DuckDB does not read: decoded apart, in batches of their own size."""
        return tuple(dict.fromkeys(c for c in self.passed if c is not None and c not in self.reads))

    @property
    def decoded(self) -> pa.Schema:
        """The columns the query needs, as decoded: those DuckDB reads, then the wide ones."""
        assert self.source is not None
        return pa.schema([self.source.field(c) for c in dict.fromkeys((*self.reads, *self.wide))])


def split_query(
    con: duckdb.DuckDBPyConnection,
    query: str,
    source_schema: pa.Schema,
    *,
    keeps_rows: bool,
    positions: bool = False,
) -> BatchQuery:
    """Plan ``query`` (row-local, over ``source``) to run on decoded batches of ``source_schema``.

    A single ``SELECT ... FROM source [WHERE ...]`` has its bare column references moved out
    of DuckDB; any other row-local shape runs whole in DuckDB, still on pyarrow's batches.
    ``positions``: a single SELECT reports each output row's input row even when it passes no
    column through (so that one run's output can be cut by where its rows came from).
    """
    tree = sqlmod.parse(con, query)
    names = {name.lower(): name for name in source_schema.names}
    select = sqlmod.single_select(tree)
    if select is None:
        return BatchQuery(
            query, _referenced(tree, names, source_schema.names), (), keeps_rows, query, source_schema
        )
    aliases = {SOURCE, str(select["from_table"].get("alias") or "").lower()} - {""}
    passed: list[str | None] = []
    computed: list[dict[str, Any]] = []
    for item in select["select_list"]:
        expanded = _passed_columns(item, names, aliases, source_schema.names)
        if expanded is None:
            passed.append(None)
            computed.append(item)
        else:
            passed.extend(expanded)
    if not positions and not any(p is not None for p in passed):
        return BatchQuery(
            query, _referenced(tree, names, source_schema.names), (), keeps_rows, query, source_schema
        )
    select["select_list"] = [
        *computed,
        {"class": "COLUMN_REF", "type": "COLUMN_REF", "alias": "", "column_names": [POSITION]},
    ]
    sql = sqlmod.unparse(con, tree)
    reads = tuple(c for c in _referenced(tree, names, source_schema.names) if c != POSITION)
    return BatchQuery(sql, reads, tuple(passed), keeps_rows, query, source_schema)


def output_schema(query: str, batch: BatchQuery, source_schema: pa.Schema) -> pa.Schema:
    """The schema of what :class:`BatchSQL` yields: DuckDB's names and types for what it
    computes, the decoded Arrow types for the columns passed through."""
    # A connection of its own: the planning one has a `source` view of the files already.
    with duckdb.connect() as own:
        own.register(SOURCE, _stand_in(own, source_schema, batch.reads))
        result = own.sql(f"SELECT * FROM ({query}) LIMIT 0").to_arrow_table().schema
    if not batch.passed:
        return result
    if len(batch.passed) != len(result):
        raise ValueError(f"expected {len(batch.passed)} output columns, found {len(result)}")
    return pa.schema(
        [
            field if column is None else field.with_type(source_schema.field(column).type)
            for field, column in zip(result, batch.passed, strict=True)
        ]
    )


def _stand_in(con: duckdb.DuckDBPyConnection, schema: pa.Schema, reads: Sequence[str]) -> pa.Table:
    """An empty table of ``schema`` to bind a query against. A column of a type DuckDB cannot
    take from Arrow (pyarrow's float16) is NULL there where the query only passes it through
    (the output takes its decoded type back); one DuckDB reads raises ValueError, and DuckDB
    then reads the files itself."""
    empty = schema.empty_table()
    try:
        con.register("duckstream_probe", empty)
        return empty
    except duckdb.Error:
        pass  # find the columns at fault
    fields = []
    for field in schema:
        try:
            con.register("duckstream_probe", pa.schema([field]).empty_table())
        except duckdb.Error:
            if field.name in reads:
                raise ValueError(
                    f"DuckDB cannot take column {field.name!r} ({field.type}) from Arrow"
                ) from None
            field = field.with_type(pa.null())
        fields.append(field)
    return pa.schema(fields).empty_table()


def _passed_columns(
    item: dict[str, Any], names: dict[str, str], aliases: set[str], columns: Sequence[str]
) -> list[str] | None:
    """The source columns a select-list item passes through unchanged, or None if it computes."""
    if item.get("class") == "STAR":
        plain = not any(
            item.get(k) for k in ("exclude_list", "replace_list", "rename_list", "expr", "columns")
        )
        relation = str(item.get("relation_name") or "").lower()
        if plain and (not relation or relation in aliases):
            return list(columns)
        return None
    if item.get("class") != "COLUMN_REF":
        return None
    parts = [str(p) for p in item.get("column_names", [])]
    if len(parts) == 2 and parts[0].lower() in aliases:
        parts = parts[1:]
    if len(parts) != 1 or parts[0].lower() not in names:
        return None
    column = names[parts[0].lower()]
    # A renaming alias changes only the name, which the result schema carries.
    return [column]


def _referenced(tree: Any, names: dict[str, str], columns: Sequence[str]) -> tuple[str, ...]:
    """Source columns the statement may read: every column it names, or all behind a ``*``."""
    found: dict[str, None] = {}
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class") == "STAR":
                return tuple(columns)
            if item.get("class") == "COLUMN_REF":
                for part in item.get("column_names", []):
                    if str(part).lower() in names:
                        found[names[str(part).lower()]] = None
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return tuple(c for c in columns if c in found)


class BatchSQL:
    """Runs a :class:`BatchQuery` on decoded batches, on a DuckDB connection of its own."""

    def __init__(self, query: BatchQuery, schema: pa.Schema) -> None:
        self._query = query
        self._schema = schema
        self._con: duckdb.DuckDBPyConnection | None = None

    def close(self) -> None:
        if self._con is not None:
            _release(self._con)
            self._con = None

    def apply(
        self,
        read: Iterable[pa.RecordBatch],
        wide: Iterable[pa.RecordBatch] | None,
        *,
        batch_rows: int,
        group_rows: int,
        key: Hashable | None = None,
    ) -> Generator[pa.RecordBatch, None, None]:
        """The query's output over the same rows decoded twice: the columns DuckDB reads
        (``read``) and the :attr:`BatchQuery.wide` ones (``wide``).

        DuckDB runs once per ``group_rows`` rows of ``read`` (decoders stop at each row group,
        which may be smaller). Output batches hold at most ``batch_rows`` rows of input, or
        follow ``wide``'s batches. ``key`` names the rows ``read`` holds, the same on every
        read of them: then the rows a filter keeps are remembered (:mod:`kept_rows`).
        """
        pieces = _Pieces(iter(wide)) if wide is not None else None
        remembers = key is not None and self.selects_only
        done = 0
        for batch in _grouped(read, group_rows):
            group = (key, self._query.sql, done, batch.num_rows)
            known = kept_rows.kept(group) if remembers else None
            if known is not None:
                result = pa.RecordBatch.from_arrays([pa.array(known)], names=[POSITION])
            else:
                result = self._duckdb(batch)
                if remembers:
                    kept_rows.remember(group, result.column(POSITION).to_numpy(), batch.num_rows)
            done += batch.num_rows
            yield from self._split(batch, result, pieces, batch_rows)
        if pieces is not None and pieces.pending():
            raise ValueError("the passed columns hold more rows than the columns DuckDB read")

    @property
    def selects_only(self) -> bool:
        """Whether the query only selects rows: every output column passes a source column
        through, so DuckDB's result is the kept rows' positions alone."""
        query = self._query
        return not query.keeps_rows and bool(query.passed) and all(c is not None for c in query.passed)

    def over(self, rows: pa.Table) -> pa.Table:
        """The query's output over ``rows`` (its :attr:`BatchQuery.decoded` columns, any
        batches), in one DuckDB run; for a query that keeps rows, output row k is row k."""
        query = self._query
        if query.keeps_rows:
            return self._row_for_row(rows)
        read = rows.select(list(query.reads)).to_batches()
        wide = rows.select(list(query.wide)).to_batches() if query.wide else None
        out = self.apply(read, wide, batch_rows=max(1, rows.num_rows), group_rows=max(1, rows.num_rows))
        return pa.Table.from_batches([_typed(batch, self._schema) for batch in out], schema=self._schema)

    def _row_for_row(self, rows: pa.Table) -> pa.Table:
        """:meth:`over` for a query that keeps rows: DuckDB scans the window's batches where
        they lie (joining them first copied every value it reads, a list of captions say), and
        passed columns are the window's own."""
        query = self._query
        result = self._run(rows.select(list(query.reads)))
        if result.num_rows != rows.num_rows:
            raise ValueError(f"expected {rows.num_rows} rows from DuckDB, found {result.num_rows}")
        if not query.passed:
            return _typed(result, self._schema)
        computed = iter(result.columns)
        columns = [next(computed) if column is None else rows.column(column) for column in query.passed]
        return _typed(pa.Table.from_arrays(columns, names=self._schema.names), self._schema)

    def each(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The query's output over ``batch`` (which holds every column the query names) as one
        batch of the output schema, empty when no row passes: one batch out per batch in."""
        query = self._query
        result = self._duckdb(batch.select(list(query.reads)))
        if not query.passed:
            return _typed(result, self._schema)
        positions = result.column(POSITION).to_numpy()
        if not len(positions):
            return pa.RecordBatch.from_pylist([], schema=self._schema)
        out = self._output(batch, result, positions, 0, None, 0)
        # Wide values a filter selected come as views: one batch here is an item, of plain types.
        return out if out.schema == self._schema else out.cast(self._schema)

    def each_of(self, batches: Sequence[pa.RecordBatch]) -> list[pa.RecordBatch]:
        """:meth:`each` of every batch, in one DuckDB run over them all where the query reports
        input positions (DuckDB costs about a millisecond a run, whatever its rows)."""
        query = self._query
        if not query.passed or len(batches) < 2:
            return [self.each(batch) for batch in batches]
        # Only the columns DuckDB reads are joined; the others are taken from each batch.
        result = self._duckdb(pa.concat_batches([batch.select(list(query.reads)) for batch in batches]))
        positions = result.column(POSITION).to_numpy()
        starts = np.concatenate([[0], np.cumsum([batch.num_rows for batch in batches])])
        bounds = np.searchsorted(positions, starts, side="left").tolist()
        out = []
        for batch, start, (lo, hi) in zip(batches, starts.tolist(), itertools.pairwise(bounds), strict=False):
            if hi == lo:
                out.append(pa.RecordBatch.from_pylist([], schema=self._schema))
                continue
            part = self._output(batch, result, positions[lo:hi] - start, lo, None, 0)
            out.append(part if part.schema == self._schema else part.cast(self._schema))
        return out

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = _acquire()
        return self._con

    def _duckdb(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """DuckDB's result over ``batch``, with positions when columns are passed."""
        table = self._run(pa.Table.from_batches([batch]))
        batches = table.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)

    def _run(self, rows: pa.Table) -> pa.Table:
        """DuckDB's result over ``rows`` (any chunks), with positions when columns are passed."""
        query = self._query
        if query.passed or not rows.num_columns:
            # Positions, or (for SELECT 1 FROM source) just one row per input row.
            rows = rows.append_column(POSITION, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        con = self._connection()
        con.register(SOURCE, rows)
        try:
            return con.sql(query.sql).to_arrow_table()
        except duckdb.Error as exc:
            raise engine.query_error(exc, query.statement) from None
        finally:
            con.unregister(SOURCE)

    def _split(
        self,
        batch: pa.RecordBatch,
        result: pa.RecordBatch,
        pieces: _Pieces | None,
        batch_rows: int,
    ) -> Iterator[pa.RecordBatch]:
        query = self._query
        if not query.passed:
            for start in range(0, result.num_rows, batch_rows):
                yield _typed(result.slice(start, batch_rows), self._schema)
            return
        positions = result.column(POSITION).to_numpy()
        done = 0
        while done < batch.num_rows:
            piece = pieces.take(batch.num_rows - done) if pieces is not None else None
            rows = piece.num_rows if piece is not None else min(batch.num_rows - done, batch_rows)
            lo, hi = (
                (done, done + rows)
                if query.keeps_rows
                else (
                    int(np.searchsorted(positions, done, side="left")),
                    int(np.searchsorted(positions, done + rows, side="left")),
                )
            )
            if hi > lo:
                yield self._output(batch, result, positions[lo:hi], lo, piece, done)
            done += rows

    def _output(
        self,
        batch: pa.RecordBatch,
        result: pa.RecordBatch,
        local: np.ndarray,
        lo: int,
        piece: pa.RecordBatch | None,
        offset: int,
    ) -> pa.RecordBatch:
        """Output rows ``lo..`` of ``result``, whose input rows are ``local``; passed values
        from ``batch`` (or ``piece``, which starts at input row ``offset``)."""
        rows = len(local)
        contiguous = self._query.keeps_rows or (
            local[-1] - local[0] == rows - 1 and bool(np.all(np.diff(local) == 1))
        )
        columns: list[pa.Array] = []
        computed = 0
        for column in self._query.passed:
            if column is None:
                columns.append(result.column(computed).slice(lo, rows))
                computed += 1
                continue
            source, start = (batch, 0) if piece is None or column in self._query.reads else (piece, offset)
            values = source.column(column)
            first = int(local[0]) - start
            if contiguous:
                columns.append(values.slice(first, rows))
            elif viewable(values):
                # Wide values a filter selected are not copied here: the shuffle window
                # copies them once, into the batches it gathers.
                columns.append(take_views(values, local - start))
            else:
                columns.append(values.take(pa.array(local - start)))
        if all(c.type == f.type for c, f in zip(columns, self._schema, strict=True)):
            return pa.RecordBatch.from_arrays(columns, schema=self._schema)
        return pa.RecordBatch.from_arrays(columns, names=self._schema.names)


# Connections of this process not in use: each epoch's readers take one instead of opening
# their own (about 10 ms a reader). Keyed by process, since a forked worker must not use its
# parent's connections. A shuffled read keeps a reader per stream it reads side by side, so as
# many are kept: with fewer, every group of streams opened some anew (11 connects an epoch, a
# third of an expression's read time).
_IDLE: dict[int, list[duckdb.DuckDBPyConnection]] = {}
_IDLE_LOCK = threading.Lock()
_MAX_IDLE = DEFAULT_STREAMS


def _acquire() -> duckdb.DuckDBPyConnection:
    with _IDLE_LOCK:
        idle = _IDLE.get(os.getpid())
        if idle:
            return idle.pop()
    # One thread: readers run side by side already.
    return engine.connect(extensions=(), threads=1)


def _release(con: duckdb.DuckDBPyConnection) -> None:
    with _IDLE_LOCK:
        idle = _IDLE.setdefault(os.getpid(), [])
        if len(idle) < _MAX_IDLE:
            idle.append(con)
            return
    con.close()


def _grouped(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Consecutive batches joined into batches of at least ``rows`` rows (the last may be short)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        held.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield held[0] if len(held) == 1 else pa.concat_batches(held)
            held, count = [], 0
    if held:
        yield held[0] if len(held) == 1 else pa.concat_batches(held)


class _Pieces:
    """Batches handed out in pieces of at most a given number of rows (zero-copy slices)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._held: pa.RecordBatch | None = None

    def take(self, rows: int) -> pa.RecordBatch:
        while self._held is None or self._held.num_rows == 0:
            held = next(self._batches, None)
            if held is None:
                raise ValueError("the passed columns hold fewer rows than the columns DuckDB read")
            self._held = held
        piece = self._held.slice(0, rows)
        self._held = self._held.slice(piece.num_rows)
        return piece

    def pending(self) -> bool:
        if self._held is not None and self._held.num_rows:
            return True
        return any(b.num_rows for b in self._batches)


def _typed(batch: _Rows, schema: pa.Schema) -> _Rows:
    batch = batch.rename_columns(schema.names)
    return batch if batch.schema == schema else batch.cast(schema)
