from __future__ import annotations

import pyarrow as pa

from duckstream.adapters.transport import pack, unpack
from tests.conftest import numbers_table


def test_a_batch_survives_the_round_trip_in_shared_memory() -> None:
    batch = numbers_table(0, 300).to_batches()[0].slice(7, 100)
    packed = pack(batch)
    assert packed.is_shared()  # type: ignore[no-untyped-call]
    restored = unpack(packed, batch.schema)
    assert restored.equals(batch)
    del packed  # the batch keeps the memory alive on its own
    assert restored.column("id").to_pylist() == list(range(7, 107))


def test_empty_batches_and_nested_types_round_trip() -> None:
    table = pa.table({"s": pa.array([["a", "b"], [], None], pa.list_(pa.string())), "b": [b"x", b"", None]})
    for batch in (table.to_batches()[0], table.to_batches()[0].slice(0, 0)):
        assert unpack(pack(batch), batch.schema).equals(batch)
