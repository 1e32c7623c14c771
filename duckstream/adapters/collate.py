"""Turning one Arrow record batch into what a training loop receives: tensors, arrays, Arrow or Python."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from duckstream._optional import require
from duckstream.errors import CollateError, ConfigurationError
from duckstream.redact import redact

# Plain sorted(), as the package test checks; ruff's isort-style order would put OUTPUTS first.
__all__ = ["OUTPUTS", "Output", "collate_batch", "collate_rows"]

Output = Literal["torch", "numpy", "arrow", "python"]
OUTPUTS: tuple[str, ...] = ("arrow", "numpy", "python", "torch")

# torch supports uint16/uint32 tensors only for a few operations, so those are widened to the next
# signed type that holds every value; uint64 has no wider type and is checked value by value.
_TORCH_WIDER: dict[pa.DataType, type[np.signedinteger[Any]]] = {
    pa.uint16(): np.int32,
    pa.uint32(): np.int64,
}
_INT64_MAX = int(np.iinfo(np.int64).max)


def collate_batch(batch: pa.RecordBatch, output: Output) -> Any:
    """One batch -> one item.

    ``"arrow"`` returns ``batch`` itself and ``"python"`` ``batch.to_pydict()``. ``"torch"`` and
    ``"numpy"`` return a dict from column name to a tensor / array of shape ``(n, ...)`` for numeric
    and fixed-size-list columns, and to a Python list for every other column. The Arrow type alone
    decides which, so every batch of a column gives the same Python type.

    Tensors and arrays share Arrow's memory where Arrow allows it; that memory is read-only, so
    ``.clone()`` / ``.copy()`` a value before changing it in place. Raises :class:`CollateError` for
    a null in an integer, boolean or fixed-size-list column, and
    :class:`~duckstream.errors.ConfigurationError` for an unknown ``output``.
    """
    _check_output(output)
    if output == "arrow":
        return batch
    _check_unique_names(batch)
    if output == "python":
        return batch.to_pydict()
    return _columns(batch, output)


def collate_rows(batch: pa.RecordBatch, output: Output) -> Iterator[Any]:
    """One batch -> one item per row, in order.

    ``"arrow"`` yields zero-copy 1-row slices and ``"python"`` the dicts of ``batch.to_pylist()``.
    ``"torch"`` and ``"numpy"`` yield dicts holding the row of each column of
    :func:`collate_batch`: a 0-d tensor / NumPy scalar for a numeric column, a tensor / array of
    shape ``(k, ...)`` for a fixed-size-list column, a Python value otherwise. The errors are those
    of :func:`collate_batch`, raised by this call rather than at the first row.
    """
    # Validated here, not in the generator, so that a wrong argument fails where it is passed.
    _check_output(output)
    if output == "arrow":
        return (batch.slice(i, 1) for i in range(batch.num_rows))
    _check_unique_names(batch)
    if output == "python":
        return iter(batch.to_pylist())
    # Converted once for the whole batch; the rows are then views of (or items from) these values.
    cells = {name: list(values) for name, values in _columns(batch, output).items()}
    return ({name: column[i] for name, column in cells.items()} for i in range(batch.num_rows))


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        allowed = ", ".join(repr(name) for name in OUTPUTS)
        raise ConfigurationError(f"output must be one of {allowed}; got {output!r}")


def _check_unique_names(batch: pa.RecordBatch) -> None:
    # A dict keeps one value per name, so a repeated name would silently lose a column.
    names = batch.schema.names
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CollateError(
            redact(
                f"expected distinct column names, found {', '.join(map(repr, repeated))} more than once; "
                "give each column its own name in the SQL, e.g. SELECT a.id AS a_id, b.id AS b_id"
            )
        )


def _columns(batch: pa.RecordBatch, output: Literal["torch", "numpy"]) -> dict[str, Any]:
    """Each column as an array (or tensor for ``"torch"``) where its type allows, else a list."""
    torch = require("torch") if output == "torch" else None
    columns: dict[str, Any] = {}
    for name, array in zip(batch.schema.names, batch.columns, strict=True):
        values = _column(name, array, widen_unsigned=torch is not None)
        if torch is not None and isinstance(values, np.ndarray):
            values = _as_tensor(torch, values)
        columns[name] = values
    return columns


def _column(name: str, array: pa.Array, *, widen_unsigned: bool) -> np.ndarray[Any, Any] | list[Any]:
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    shape: list[int] = []
    leaf = array.type
    while pa.types.is_fixed_size_list(leaf):
        shape.append(leaf.list_size)
        leaf = leaf.value_type
    if pa.types.is_dictionary(leaf):
        leaf = leaf.value_type
    if not _is_numeric(leaf):
        python_values: list[Any] = array.to_pylist()
        return python_values
    values = array
    for _ in shape:
        # flatten() drops null entries, which would shift every later row; refuse them instead.
        if values.null_count:
            raise _null_error(name, array.type, values.null_count, f"WHERE {name} IS NOT NULL")
        # flatten(), unlike .values, honours the slice offset of the array.
        values = values.flatten()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    flat = _numeric(name, array.type, values, widen_unsigned=widen_unsigned)
    return flat.reshape(len(array), *shape) if shape else flat


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)
    )


def _numeric(
    name: str, column_type: pa.DataType, array: pa.Array, *, widen_unsigned: bool
) -> np.ndarray[Any, Any]:
    if array.null_count:
        if not pa.types.is_floating(array.type):
            default = "false" if pa.types.is_boolean(array.type) else "0"
            fill = f"COALESCE({name}, {default})"
            if pa.types.is_fixed_size_list(column_type):
                fill = f"list_transform({name}, x -> COALESCE(x, {default}))"
            raise _null_error(name, column_type, array.null_count, f"SELECT {fill} AS {name}")
        array = pc.fill_null(array, float("nan"))
    # Zero-copy for every primitive type without nulls; booleans are bit-packed, so always copied.
    values: np.ndarray[Any, Any] = array.to_numpy(zero_copy_only=False)
    if widen_unsigned and array.type in _TORCH_WIDER:
        return values.astype(_TORCH_WIDER[array.type])
    if widen_unsigned and pa.types.is_uint64(array.type):
        largest = pc.max(array).as_py()
        if largest is not None and largest > _INT64_MAX:
            raise CollateError(
                redact(
                    f"column {name!r} is uint64 and holds {largest}, above the int64 maximum "
                    f"{_INT64_MAX} of torch's widest integer; cast it in the SQL, e.g. "
                    f"CAST({name} AS DOUBLE), or use output 'numpy', which keeps uint64"
                )
            )
        # Every value fits, so the same bytes read as int64 are the same numbers: no copy.
        return values.view(np.int64)
    return values


def _null_error(name: str, column_type: pa.DataType, nulls: int, fix: str) -> CollateError:
    return CollateError(
        redact(
            f"column {name!r} ({column_type}) has {nulls} null(s) where a tensor or array cannot hold "
            f"one; replace or drop them in the SQL, e.g. {fix}"
        )
    )


def _as_tensor(torch: Any, values: np.ndarray[Any, Any]) -> Any:
    # The array views Arrow's read-only buffers; torch has no read-only tensors and warns, while
    # copying would defeat the point. The documented contract is instead: clone before writing.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(values)
