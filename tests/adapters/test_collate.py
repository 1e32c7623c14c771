"""Tests of collate: one Arrow record batch into torch, numpy, Arrow and Python items."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from duckstream.adapters.collate import OUTPUTS, Output, collate_batch, collate_rows
from duckstream.errors import CollateError, ConfigurationError, DuckstreamError

# Arrow type -> (torch dtype, numpy dtype); torch widens the unsigned types it barely supports.
NUMERIC: dict[pa.DataType, tuple[torch.dtype, np.dtype[Any]]] = {
    pa.int8(): (torch.int8, np.dtype(np.int8)),
    pa.int16(): (torch.int16, np.dtype(np.int16)),
    pa.int32(): (torch.int32, np.dtype(np.int32)),
    pa.int64(): (torch.int64, np.dtype(np.int64)),
    pa.uint8(): (torch.uint8, np.dtype(np.uint8)),
    pa.uint16(): (torch.int32, np.dtype(np.uint16)),
    pa.uint32(): (torch.int64, np.dtype(np.uint32)),
    pa.uint64(): (torch.int64, np.dtype(np.uint64)),
    pa.float16(): (torch.float16, np.dtype(np.float16)),
    pa.float32(): (torch.float32, np.dtype(np.float32)),
    pa.float64(): (torch.float64, np.dtype(np.float64)),
    pa.bool_(): (torch.bool, np.dtype(np.bool_)),
}


def _sample(arrow_type: pa.DataType) -> pa.Array:
    if pa.types.is_boolean(arrow_type):
        return pa.array([True, False, False, True, True, False, True], arrow_type)
    if pa.types.is_floating(arrow_type):
        return pa.array([0.5, -1.5, 2.0, 3.25, -4.0, 5.5, 6.0], arrow_type)
    top = {1: 120, 2: 30_000, 4: 2_000_000_000, 8: 9_000_000_000_000_000_000}[arrow_type.byte_width]
    if pa.types.is_signed_integer(arrow_type):
        return pa.array([0, 1, -1, top, -top, 7, 3], arrow_type)
    return pa.array([0, 1, 255, top, top // 2, 7, 3], arrow_type)


def _fixed(values: np.ndarray[Any, Any], *sizes: int) -> pa.Array:
    """A (nested) fixed-size list array whose rows have the shape ``sizes``."""
    array: pa.Array = pa.array(values.ravel())
    for size in reversed(sizes):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


def _batch(**columns: pa.Array) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(list(columns.values()), names=list(columns))


def _address(array: pa.Array, itemsize: int) -> int:
    return int(array.buffers()[1].address + array.offset * itemsize)


def test_outputs_lists_every_literal_sorted() -> None:
    assert tuple(sorted(get_args(Output))) == OUTPUTS


def test_collate_error_is_ours_and_a_value_error() -> None:
    assert issubclass(CollateError, DuckstreamError)
    assert issubclass(CollateError, ValueError)


@pytest.mark.parametrize("arrow_type", list(NUMERIC), ids=str)
@pytest.mark.parametrize(("offset", "length"), [(0, 7), (2, 4), (6, 1)])
def test_numeric_columns_round_trip(arrow_type: pa.DataType, offset: int, length: int) -> None:
    batch = _batch(x=_sample(arrow_type)).slice(offset, length)
    expected = batch.column(0).to_pylist()
    torch_dtype, numpy_dtype = NUMERIC[arrow_type]

    tensor = collate_batch(batch, "torch")["x"]
    assert isinstance(tensor, torch.Tensor)
    assert (tensor.dtype, tensor.shape) == (torch_dtype, (length,))
    assert tensor.tolist() == expected

    array = collate_batch(batch, "numpy")["x"]
    assert isinstance(array, np.ndarray)
    assert (array.dtype, array.shape) == (numpy_dtype, (length,))
    assert array.tolist() == expected


@pytest.mark.parametrize(("arrow_type", "itemsize"), [(pa.int64(), 8), (pa.float32(), 4), (pa.uint64(), 8)])
def test_numeric_columns_share_arrows_memory(arrow_type: pa.DataType, itemsize: int) -> None:
    batch = _batch(x=_sample(arrow_type)).slice(3)
    column = batch.column(0)
    assert collate_batch(batch, "torch")["x"].data_ptr() == _address(column, itemsize)
    assert collate_batch(batch, "numpy")["x"].__array_interface__["data"][0] == _address(column, itemsize)


def test_fixed_size_lists_share_arrows_memory() -> None:
    column = _fixed(np.arange(12, dtype=np.float32), 3)
    batch = _batch(v=column).slice(1)
    tensor = collate_batch(batch, "torch")["v"]
    assert tensor.data_ptr() == _address(column.values, 4) + 1 * 3 * 4
    assert tensor.tolist() == batch.column(0).to_pylist()


def test_uint64_above_int64_fails_for_torch_only() -> None:
    batch = _batch(big=pa.array([1, 2**63], pa.uint64()))
    with pytest.raises(CollateError, match=r"'big'.*uint64.*CAST\(big AS DOUBLE\)"):
        collate_batch(batch, "torch")
    assert collate_batch(batch, "numpy")["big"].tolist() == [1, 2**63]
    # The offending value outside the slice does not count.
    assert collate_batch(batch.slice(0, 1), "torch")["big"].tolist() == [1]


@pytest.mark.parametrize(("offset", "length"), [(0, 5), (1, 3), (4, 1)])
def test_nested_fixed_size_lists_reshape_like_an_image(offset: int, length: int) -> None:
    pixels = np.arange(5 * 3 * 4, dtype=np.uint8).reshape(5, 3, 4)
    batch = _batch(image=_fixed(pixels, 3, 4), vector=_fixed(pixels[:, 0, :].astype(np.float64), 4))
    batch = batch.slice(offset, length)
    items = collate_batch(batch, "torch")
    assert items["image"].shape == (length, 3, 4)
    assert items["image"].dtype == torch.uint8
    assert np.array_equal(items["image"].numpy(), pixels[offset : offset + length])
    assert items["vector"].shape == (length, 4)
    assert np.array_equal(items["vector"].numpy(), pixels[offset : offset + length, 0, :])
    arrays = collate_batch(batch, "numpy")
    assert np.array_equal(arrays["image"], pixels[offset : offset + length])


@pytest.mark.parametrize("arrow_type", [pa.float16(), pa.float32(), pa.float64()], ids=str)
def test_floats_with_nulls_become_nan(arrow_type: pa.DataType) -> None:
    column = pa.array([1.0, None, 2.0, None, 3.0], arrow_type)
    batch = _batch(f=column).slice(1)
    for output in ("torch", "numpy"):
        values = np.asarray(collate_batch(batch, output)["f"])
        assert np.isnan(values).tolist() == [True, False, True, False]
        assert values[[1, 3]].tolist() == [2.0, 3.0]


def test_fixed_size_float_lists_with_null_values_become_nan() -> None:
    column = pa.FixedSizeListArray.from_arrays(pa.array([1.0, None, 3.0, 4.0], pa.float32()), 2)
    tensor = collate_batch(_batch(v=column), "torch")["v"]
    assert torch.isnan(tensor).tolist() == [[False, True], [False, False]]


@pytest.mark.parametrize("output", ["torch", "numpy"])
@pytest.mark.parametrize(
    ("column", "default"),
    [(pa.array([1, None, 3], pa.int32()), "0"), (pa.array([True, None, False]), "false")],
    ids=["int", "bool"],
)
def test_null_ints_and_bools_fail_with_coalesce(output: Output, column: pa.Array, default: str) -> None:
    batch = _batch(label=column)
    with pytest.raises(CollateError, match=rf"'label'.*COALESCE\(label, {default}\)"):
        collate_batch(batch, output)
    with pytest.raises(CollateError, match="COALESCE"):
        collate_rows(batch, output)
    # Nulls outside the slice are not seen.
    assert collate_batch(batch.slice(2), output)["label"].tolist() == column.to_pylist()[2:]


@pytest.mark.parametrize("output", ["torch", "numpy"])
def test_null_fixed_size_list_entries_fail_naming_the_column(output: Output) -> None:
    column = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32(), 2))
    with pytest.raises(CollateError, match=r"'emb'.*WHERE emb IS NOT NULL"):
        collate_batch(_batch(emb=column), output)
    nested = pa.FixedSizeListArray.from_arrays(column, 3)
    with pytest.raises(CollateError, match="'img'"):
        collate_batch(_batch(img=nested), output)
    ints = pa.FixedSizeListArray.from_arrays(pa.array([1, None], pa.int64()), 2)
    with pytest.raises(CollateError, match=r"'ids'.*COALESCE"):
        collate_batch(_batch(ids=ints), output)


OTHER_COLUMNS: dict[str, pa.Array] = {
    "string": pa.array(["a", None, "ccc"], pa.string()),
    "large_string": pa.array(["a", "bb", None], pa.large_string()),
    "string_view": pa.array(["x", "yy", "zzz"], pa.string_view()),
    "binary": pa.array([b"\x00", None, b"ab"], pa.binary()),
    "large_binary": pa.array([b"", b"q", b"r"], pa.large_binary()),
    "ragged": pa.array([[1, 2], [], None], pa.list_(pa.int64())),
    "struct": pa.array([{"a": 1, "b": "x"}, None, {"a": 3, "b": None}]),
    "map": pa.array([[("k", 1)], [], None], pa.map_(pa.string(), pa.int64())),
    "timestamp": pa.array([dt.datetime(2024, 1, 1), None, dt.datetime(2025, 6, 30, 12)], pa.timestamp("us")),
    "date": pa.array([dt.date(2024, 1, 1), dt.date(2024, 2, 29), None], pa.date32()),
    "decimal": pa.array([decimal.Decimal("1.50"), None, decimal.Decimal("-2.25")], pa.decimal128(5, 2)),
    "fixed_strings": pa.array([["a", "b"], ["c", None], None], pa.list_(pa.string(), 2)),
    "nulls": pa.nulls(3),
}


@pytest.mark.parametrize("output", ["torch", "numpy"])
@pytest.mark.parametrize("name", list(OTHER_COLUMNS))
def test_other_columns_become_python_lists(output: Output, name: str) -> None:
    batch = _batch(**{name: OTHER_COLUMNS[name]})
    for part in (batch, batch.slice(1)):
        values = collate_batch(part, output)[name]
        assert type(values) is list
        assert values == part.column(0).to_pylist()


@pytest.mark.parametrize("output", ["torch", "numpy"])
def test_dictionary_columns_are_decoded_first(output: Output) -> None:
    batch = _batch(
        city=pa.array(["oslo", "rome", "oslo", None]).dictionary_encode(),
        score=pa.array([0.5, 1.5, 0.5, 2.5], pa.float32()).dictionary_encode(),
        label=pa.array([3, 1, 3, 3], pa.int16()).dictionary_encode(),
    ).slice(1)
    items = collate_batch(batch, output)
    assert items["city"] == ["rome", "oslo", None]
    assert items["score"].dtype == (torch.float32 if output == "torch" else np.float32)
    assert items["score"].tolist() == [1.5, 0.5, 2.5]
    assert items["label"].tolist() == [1, 3, 3]
    with pytest.raises(CollateError, match="'label'"):
        collate_batch(_batch(label=pa.array([1, None]).dictionary_encode()), output)


def _mixed_batch() -> pa.RecordBatch:
    return _batch(
        id=pa.array(range(6), pa.int64()),
        weight=pa.array([0.5, None, 1.5, 2.0, 2.5, 3.0], pa.float64()),
        flag=pa.array([True, False] * 3),
        vec=_fixed(np.arange(18, dtype=np.float32), 3),
        image=_fixed(np.arange(24, dtype=np.uint8), 2, 2),
        text=pa.array(["a", "b", None, "d", "e", "f"]),
        tags=pa.array([[1], [], [2, 3], None, [4], [5]]),
        when=pa.array([dt.date(2024, 1, day) for day in range(1, 7)]),
    ).slice(1)


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, torch.Tensor):
        return type(right) is torch.Tensor and torch.equal(left.nan_to_num(-1), right.nan_to_num(-1))
    if isinstance(left, np.ndarray | np.generic):
        return type(left) is type(right) and np.array_equal(left, right, equal_nan=True)
    return bool(left == right)


@pytest.mark.parametrize("output", ["torch", "numpy"])
def test_rows_match_the_batch_row_by_row(output: Output) -> None:
    batch = _mixed_batch()
    columns = collate_batch(batch, output)
    rows = list(collate_rows(batch, output))
    assert len(rows) == batch.num_rows
    for i, row in enumerate(rows):
        assert list(row) == batch.schema.names
        for name, value in row.items():
            assert _same(value, columns[name][i]), (i, name)
    assert np.asarray(rows[0]["id"]).shape == ()
    assert tuple(rows[0]["image"].shape) == (2, 2)


def test_python_rows_and_batch_are_to_pylist_and_to_pydict() -> None:
    batch = _mixed_batch()
    assert collate_batch(batch, "python") == batch.to_pydict()
    rows = list(collate_rows(batch, "python"))
    assert rows == batch.to_pylist()
    columns = collate_batch(batch, "python")
    assert rows == [{name: columns[name][i] for name in columns} for i in range(batch.num_rows)]


def test_arrow_batch_is_unchanged_and_rows_are_zero_copy_slices() -> None:
    batch = _mixed_batch()
    assert collate_batch(batch, "arrow") is batch
    rows = list(collate_rows(batch, "arrow"))
    assert len(rows) == batch.num_rows
    for i, row in enumerate(rows):
        assert isinstance(row, pa.RecordBatch)
        assert row.num_rows == 1
        assert row.equals(batch.slice(i, 1))
        assert row.column(0).buffers()[1].address == batch.column(0).buffers()[1].address


@pytest.mark.parametrize("output", OUTPUTS)
def test_an_empty_batch_works_for_every_output(output: Output) -> None:
    batch = _mixed_batch().slice(0, 0)
    assert list(collate_rows(batch, output)) == []
    items = collate_batch(batch, output)
    if output == "arrow":
        assert items.num_rows == 0
    elif output == "python":
        assert items == {name: [] for name in batch.schema.names}
    else:
        assert tuple(items["id"].shape) == (0,)
        assert tuple(items["image"].shape) == (0, 2, 2)
        assert items["text"] == []


def test_a_batch_without_columns_keeps_its_rows() -> None:
    batch = pa.RecordBatch.from_pydict({"x": [1, 2]}).select([])
    for output in get_args(Output):
        assert len(list(collate_rows(batch, output))) == 2


@pytest.mark.parametrize("output", ["torch", "numpy", "python"])
def test_repeated_column_names_are_refused(output: Output) -> None:
    batch = pa.RecordBatch.from_arrays([pa.array([1]), pa.array([2])], names=["id", "id"])
    with pytest.raises(CollateError, match=r"'id'.* AS "):
        collate_batch(batch, output)


def test_unknown_output_names_the_allowed_values() -> None:
    batch = _mixed_batch()
    allowed = r"'arrow', 'numpy', 'python', 'torch'; got 'pandas'"
    with pytest.raises(ConfigurationError, match=allowed):
        collate_batch(batch, "pandas")  # type: ignore[arg-type]
    # Raised by the call itself, before any row is asked for.
    with pytest.raises(ConfigurationError, match=allowed):
        collate_rows(batch, "pandas")  # type: ignore[arg-type]


@st.composite
def sliced_batches(draw: st.DrawFn) -> pa.RecordBatch:
    rows = draw(st.integers(0, 20))
    size = draw(st.integers(1, 4))
    ints = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=rows, max_size=rows))
    floats = draw(st.lists(st.none() | st.floats(allow_nan=False), min_size=rows, max_size=rows))
    vectors = draw(st.lists(st.floats(allow_nan=False, width=32), min_size=rows * size, max_size=rows * size))
    batch = _batch(
        i=pa.array(ints, pa.int64()),
        f=pa.array(floats, pa.float64()),
        v=pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), size),
    )
    offset = draw(st.integers(0, rows))
    return batch.slice(offset, draw(st.integers(0, rows - offset)))


@settings(deadline=None, max_examples=200)
@given(sliced_batches())
def test_torch_batches_hold_the_values_of_to_pydict(batch: pa.RecordBatch) -> None:
    items = collate_batch(batch, "torch")
    expected = batch.to_pydict()
    assert items["i"].tolist() == expected["i"]
    assert [None if math.isnan(x) else x for x in items["f"].tolist()] == expected["f"]
    assert tuple(items["v"].shape) == (batch.num_rows, batch.schema.field("v").type.list_size)
    assert items["v"].tolist() == expected["v"]
