from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from duckstream.adapters.transport import SHARED_MEMORY_BYTES, pack, unpack
from tests.conftest import numbers_table


def test_small_batches_travel_as_bytes() -> None:
    batch = numbers_table(0, 300).to_batches()[0].slice(7, 100)
    packed = pack(batch)
    assert isinstance(packed, bytes)
    assert unpack(packed, batch.schema).equals(batch)


def test_large_batches_travel_in_shared_memory_and_stay_alive() -> None:
    rows = SHARED_MEMORY_BYTES // 1_000 + 10
    batch = pa.record_batch({"blob": pa.array([bytes(1_000)] * rows), "id": pa.array(range(rows))})
    packed = pack(batch)
    assert isinstance(packed, torch.Tensor)
    assert packed.is_shared()  # type: ignore[no-untyped-call]
    restored = unpack(packed, batch.schema)
    del packed  # the batch keeps the memory alive on its own
    assert restored.equals(batch)


@pytest.mark.parametrize("rows", [0, 3])
def test_empty_batches_and_nested_types_round_trip(rows: int) -> None:
    table = pa.table({"s": pa.array([["a", "b"], [], None], pa.list_(pa.string())), "b": [b"x", b"", None]})
    batch = table.to_batches()[0].slice(0, rows)
    assert unpack(pack(batch), batch.schema).equals(batch)
