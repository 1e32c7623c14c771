"""Batches gathered from a shuffle window in any row order, copying each value once.

``Table.take`` needs one contiguous array per column, so a window of read batches would be
joined (one copy) before every value is copied again into its output batch. Variable-length
columns skip the join: each read batch's values are seen as 16-byte views (Arrow's
binary-view layout points into the read batch's own data buffer), the views are gathered with
numpy, and the one copy of the values is the cast back to the column's type. For a window of
10 KiB images that is one copy of the bytes instead of two. Short values (under
``VIEW_MIN_BYTES`` a row on average) are cheaper to join and take, as are other types.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["VIEW_MIN_BYTES", "Window", "take_views", "viewable"]

# Measured here (per row): views gather 10 KiB values in half the time of join + take, 1 KiB
# values about as fast, 256-byte values in 1.3 times the time and 64 bytes or less in 1.8 times.
VIEW_MIN_BYTES = 512

_VIEW_TYPES = {
    pa.binary(): pa.binary_view(),
    pa.large_binary(): pa.binary_view(),
    pa.string(): pa.string_view(),
    pa.large_string(): pa.string_view(),
    pa.binary_view(): pa.binary_view(),
    pa.string_view(): pa.string_view(),
}


def viewable(values: pa.Array) -> bool:
    """Whether ``values`` is gathered as views: binary or string values wide enough, or a
    view type already (``take`` has no kernel for those)."""
    if values.type not in _VIEW_TYPES:
        return False
    wide: bool = values.nbytes >= VIEW_MIN_BYTES * max(1, len(values))
    return wide or bool(_VIEW_TYPES[values.type] == values.type)


def take_views(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """``values`` at ``rows`` as a view array pointing into ``values``' own data: no value is
    copied (a filter's selection, gathered once more by the shuffle window)."""
    return _Views(pa.chunked_array([values])).gather(rows, cast=False)


class Window:
    """The rows of one shuffle window, from which batches are gathered by row index.

    ``schema`` is the type of the batches gathered, where ``rows`` holds view types in its
    place (columns that :func:`take_views` selected). With ``views``, columns gathered as
    views stay views (their fields' types in :attr:`schema` say so): for a reader that makes
    Python values of them anyway, the cast back would be one more copy of every value.
    """

    def __init__(self, rows: pa.Table, schema: pa.Schema | None = None, *, views: bool = False) -> None:
        self.num_rows = rows.num_rows
        self.row_bytes = rows.nbytes // max(1, rows.num_rows)
        declared = schema or rows.schema
        self._columns = [
            _column(rows.column(index), declared.field(index).type, views)
            for index in range(rows.num_columns)
        ]
        self.schema = (
            pa.schema(
                [field.with_type(column.type) for field, column in zip(declared, self._columns, strict=True)],
                metadata=declared.metadata,
            )
            if views
            else declared
        )

    def gather(self, rows: np.ndarray) -> pa.RecordBatch:
        """The window's rows at the indices ``rows``, in that order, as one batch."""
        return pa.RecordBatch.from_arrays(
            [column.gather(rows) for column in self._columns], schema=self.schema
        )


class _Column:
    type: pa.DataType  # of the arrays gathered

    def gather(self, rows: np.ndarray) -> pa.Array:
        raise NotImplementedError


def _column(values: pa.ChunkedArray, target: pa.DataType, views: bool = False) -> _Column:
    if viewable(values):
        return _Views(values, None if views else target)
    if pa.types.is_struct(values.type) and values.type.num_fields:
        return _Struct(values, target, views)
    return _Taken(values)


def _validity(values: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """Which rows are valid, or None when all are."""
    if values.null_count == 0:
        return None
    return np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


class _Taken(_Column):
    """Any other column: joined once, then taken from."""

    def __init__(self, values: pa.ChunkedArray) -> None:
        self._values = values.combine_chunks()
        self.type = values.type

    def gather(self, rows: np.ndarray) -> pa.Array:
        return self._values.take(rows)


class _Views(_Column):
    """A binary or string column, gathered as views into the read batches' buffers."""

    def __init__(self, values: pa.ChunkedArray, target: pa.DataType | None = None) -> None:
        """``target``: the type to cast gathered views to (None: they stay views)."""
        self._view_type = _VIEW_TYPES[values.type]
        self.type = target or self._view_type
        joined = values.cast(self._view_type).combine_chunks()
        buffers = joined.buffers()
        # Each view is 16 bytes: length and inline prefix, then buffer index and offset.
        self._views = np.frombuffer(buffers[1], dtype=np.int64).reshape(-1, 2)[: len(joined)]
        self._data = buffers[2:]
        self._valid = _validity(joined)

    def gather(self, rows: np.ndarray, *, cast: bool = True) -> pa.Array:
        views = self._views[rows]
        validity = None
        if self._valid is not None:
            valid = self._valid[rows]
            views[~valid] = 0  # a null's view must still be a valid (empty) view
            validity = pa.array(valid, type=pa.bool_()).buffers()[1]
        gathered = pa.Array.from_buffers(
            self._view_type, len(rows), [validity, pa.py_buffer(views), *self._data]
        )
        return gathered if not cast or self.type == self._view_type else gathered.cast(self.type)


class _Struct(_Column):
    """A struct column (such as an image's ``{bytes, path}``), gathered field by field."""

    def __init__(self, values: pa.ChunkedArray, target: pa.DataType, views: bool = False) -> None:
        self._fields = [
            _column(child, target.field(i).type, views) for i, child in enumerate(values.flatten())
        ]
        self._struct_fields = (
            [field.with_type(column.type) for field, column in zip(target, self._fields, strict=True)]
            if views
            else list(target)
        )
        self.type = pa.struct(self._struct_fields)
        self._valid = _validity(values)

    def gather(self, rows: np.ndarray) -> pa.Array:
        mask = None if self._valid is None else pa.array(~self._valid[rows], type=pa.bool_())
        return pa.StructArray.from_arrays(
            [field.gather(rows) for field in self._fields], fields=self._struct_fields, mask=mask
        )
