"""Gathering batches from a shuffle window: the same rows as ``take``, one copy of the values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.core.gather import VIEW_MIN_BYTES, Window, take_views, viewable
from duckstream.core.pipeline import windows as windows_of

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TYPES: dict[str, pa.DataType] = {
    "id": pa.int64(),
    "blob": pa.binary(),
    "text": pa.string(),
    "large_blob": pa.large_binary(),
    "large_text": pa.large_string(),
    "text_view": pa.string_view(),
    "captions": pa.list_(pa.string()),
    "image": IMAGE,
}


def row(index: int, width: int, scale: int, null: bool) -> dict[str, Any]:
    # Values both short (inline in a view, up to 12 bytes) and long (in a data buffer); with a
    # large scale the window's values are wide enough to be gathered as views.
    text = None if null else f"{index}-" + "x" * (index * width % 40 * scale)
    blob = None if null else bytes([index % 256]) * (index * width % 40 * scale)
    return {
        "id": index,
        "blob": blob,
        "text": text,
        "large_blob": blob,
        "large_text": text,
        "text_view": text,
        "captions": None if null else [text, "a"],
        "image": None if null else {"bytes": blob, "path": None if index % 3 else text},
    }


@st.composite
def windows(draw: st.DrawFn) -> tuple[pa.Table, np.ndarray]:
    """A window made of slices of several read batches, and row indices to gather."""
    width = draw(st.integers(1, 7))
    scale = draw(st.sampled_from([1, 100]))
    nulls = draw(st.sets(st.integers(0, 59)))
    sizes = draw(st.lists(st.integers(0, 12), min_size=1, max_size=5))
    schema = pa.schema(TYPES)
    batches = []
    start = 0
    for size in sizes:
        cut = draw(st.integers(0, 3))  # read batches reach a window as slices
        rows = [row(i, width, scale, i in nulls) for i in range(start, start + size + cut)]
        batches.append(pa.RecordBatch.from_pylist(rows, schema=schema).slice(cut))
        start += size + cut
    table = pa.Table.from_batches(batches, schema=schema)
    if table.num_rows == 0:
        return table, np.empty(0, dtype=np.int64)
    indices = draw(st.lists(st.integers(0, table.num_rows - 1), max_size=2 * table.num_rows))
    return table, np.asarray(indices, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(windows())
def test_gather_returns_the_rows_take_returns(case: tuple[pa.Table, np.ndarray]) -> None:
    table, indices = case
    gathered = Window(table).gather(indices)
    gathered.validate(full=True)
    assert gathered.schema == table.schema
    assert gathered.num_rows == len(indices)
    expected = [table.slice(int(i), 1).to_pylist()[0] for i in indices]
    assert gathered.to_pylist() == expected


@settings(max_examples=100, deadline=None)
@given(windows())
def test_views_kept_for_a_reader_of_python_values_hold_the_same_values(
    case: tuple[pa.Table, np.ndarray],
) -> None:
    # For a reader that makes Python values, columns gathered as views stay views (no copy of
    # the values): the same values; every other column, and the batch's schema, as declared.
    table, indices = case
    window = Window(table, views=True)
    gathered = window.gather(indices)
    gathered.validate(full=True)
    assert gathered.schema == window.schema
    assert gathered.to_pylist() == Window(table).gather(indices).to_pylist()
    for field, column in zip(table.schema, window._columns, strict=True):
        kept = field.type
        if type(column).__name__ == "_Views":
            kept = pa.string_view() if pa.types.is_string(kept) or pa.types.is_large_string(kept) else kept
            kept = pa.binary_view() if pa.types.is_binary(kept) or pa.types.is_large_binary(kept) else kept
        if field.name != "image":
            assert window.schema.field(field.name).type == kept, field.name
    wide = table.num_rows and table.column("blob").nbytes >= VIEW_MIN_BYTES * table.num_rows
    if wide:
        assert window.schema.field("blob").type == pa.binary_view()
        assert window.schema.field("image").type.field("bytes").type == pa.binary_view()


def test_a_gathered_batch_owns_its_values() -> None:
    """The one copy: a batch stays valid after its window and read batches are gone."""
    rows = [{"blob": bytes([i]) * 1000} for i in range(50)]
    table = pa.Table.from_pylist(rows)
    window = Window(table)
    gathered = window.gather(np.array([49, 0, 7], dtype=np.int64))
    read_buffer = table.column("blob").chunk(0).buffers()[2]
    out_buffer = gathered.column("blob").buffers()[2]
    assert out_buffer is not None
    assert read_buffer is not None
    assert not (read_buffer.address <= out_buffer.address < read_buffer.address + read_buffer.size)
    del window, table
    assert gathered.column("blob").to_pylist() == [bytes([i]) * 1000 for i in (49, 0, 7)]


def test_wide_values_are_gathered_as_views_and_short_ones_taken() -> None:
    wide = "x" * VIEW_MIN_BYTES
    table = pa.table(
        {"wide": [wide] * 10, "short": ["abc"] * 10, "view": pa.array(["a"] * 10, pa.string_view())}
    )
    kinds = [type(column).__name__ for column in Window(table)._columns]
    assert kinds == ["_Views", "_Taken", "_Views"]


@settings(max_examples=80, deadline=None)
@given(windows(), st.data())
def test_views_a_filter_took_gather_into_the_plain_types(
    case: tuple[pa.Table, np.ndarray], data: st.DataObject
) -> None:
    """A filter's selection as views, then a window over it: the rows and types of two takes."""
    table, _ = case
    schema = table.schema
    batches = []
    for batch in table.to_batches():
        picked = np.asarray(
            data.draw(st.lists(st.integers(0, max(0, batch.num_rows - 1)), max_size=8)), dtype=np.int64
        )
        if not batch.num_rows:
            continue
        columns = [
            take_views(column, picked) if viewable(column) else column.take(picked)
            for column in batch.columns
        ]
        batches.append(pa.RecordBatch.from_arrays(columns, names=schema.names))
        batches[-1].validate(full=True)
    expected_rows = [r for b in batches for r in b.to_pylist()]
    if not expected_rows:
        return
    # The window joins batches of plain and of view types as the stream does.
    (selected,) = windows_of(batches, 10_000, schema)
    order = np.asarray(data.draw(st.permutations(range(len(expected_rows)))), dtype=np.int64)
    gathered = Window(selected, schema).gather(order)
    gathered.validate(full=True)
    assert gathered.schema == schema  # views are gone: the plain types again
    assert gathered.to_pylist() == [expected_rows[i] for i in order]


def test_taking_views_copies_no_value() -> None:
    values = pa.array([bytes([i]) * 1000 for i in range(20)], pa.binary())
    taken = take_views(values, np.array([19, 3, 3], dtype=np.int64))
    assert taken.type == pa.binary_view()
    assert taken.buffers()[2].address == values.buffers()[2].address  # the same bytes
    assert taken.to_pylist() == [bytes([19]) * 1000, bytes([3]) * 1000, bytes([3]) * 1000]
    assert viewable(values)
    assert not viewable(pa.array([b"short"] * 20))
