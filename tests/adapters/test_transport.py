from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from duckstream.adapters.transport import (
    SHARED_MEMORY_BYTES,
    Ring,
    RingPlace,
    pack,
    ring_capacity,
    ring_fits,
    unpack,
    unpack_item,
)
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


@pytest.mark.parametrize("in_ring", [False, True])
@pytest.mark.parametrize("rows", [0, 3])
def test_empty_batches_and_nested_types_round_trip(rows: int, in_ring: bool) -> None:
    table = pa.table({"s": pa.array([["a", "b"], [], None], pa.list_(pa.string())), "b": [b"x", b"", None]})
    batch = table.to_batches()[0].slice(0, rows)
    ring = Ring(1, capacity=1 << 20) if in_ring else None
    packed = pack(batch, ring)
    assert isinstance(packed, RingPlace) == in_ring
    assert unpack(packed, batch.schema, ring).equals(batch)


def _batch(start: int, rows: int) -> pa.RecordBatch:
    # fixed-width columns: every message of the same row count has the same size
    return pa.record_batch({"id": pa.array(range(start, start + rows), pa.int64())})


def test_ring_messages_wrap_around_and_free_their_room() -> None:
    size = Ring(1).room_for(_batch(0, 50))
    ring = Ring(2, capacity=size * 4 + size // 2)  # 4.5 messages: the fifth wraps
    sent = [_batch(index * 50, 50) for index in range(12)]
    for index, batch in enumerate(sent):
        packed = pack(batch, ring, worker=1)
        assert isinstance(packed, RingPlace), index
        assert packed.offset + packed.size <= ring.capacity
        assert unpack(packed, batch.schema, ring).equals(batch)
    assert ring.positions[0].tolist() == [0, 0]  # the other worker's ring is untouched


def test_a_full_ring_falls_back_to_the_pipe_and_batches_stay_intact() -> None:
    size = Ring(1).room_for(_batch(0, 50))
    ring = Ring(1, capacity=size * 4)
    sent = [_batch(index * 50, 50) for index in range(6)]
    packed = [pack(batch, ring) for batch in sent]  # nothing read yet: the ring fills up
    assert [isinstance(p, RingPlace) for p in packed] == [True] * 4 + [False] * 2
    kept = [unpack(p, b.schema, ring) for p, b in zip(packed, sent, strict=True)]
    for later in range(6, 10):  # the ring is reused while the earlier batches are still held
        batch = _batch(later * 50, 50)
        assert unpack(pack(batch, ring), batch.schema, ring).equals(batch)
    assert all(k.equals(b) for k, b in zip(kept, sent, strict=True))


def test_reading_a_later_message_frees_messages_dropped_unread() -> None:
    size = Ring(1).room_for(_batch(0, 50))
    ring = Ring(1, capacity=size * 4)
    dropped = [pack(_batch(i * 50, 50), ring) for i in range(3)]
    assert all(isinstance(p, RingPlace) for p in dropped)
    last = pack(_batch(150, 50), ring)
    assert isinstance(last, RingPlace)
    unpack(last, last_schema := _batch(0, 1).schema, ring)
    refill = [pack(_batch(i * 50, 50), ring) for i in range(4)]
    assert all(isinstance(p, RingPlace) for p in refill)
    assert unpack(refill[3], last_schema, ring).equals(_batch(150, 50))


def test_messages_larger_than_a_quarter_ring_skip_it() -> None:
    ring = Ring(1, capacity=4096)
    batch = _batch(0, 200)
    assert ring.room_for(batch) > 1024
    assert isinstance(pack(batch, ring), bytes)
    assert ring.positions.tolist() == [[0, 0]]


def test_rings_are_sized_to_the_transfers_and_to_the_room_in_shared_memory() -> None:
    assert ring_capacity(10) == 1024 * 1024
    assert ring_capacity(1024 * 1024) == 8 * 1024 * 1024
    assert ring_capacity(1 << 30) == 16 * 1024 * 1024
    assert ring_fits(2, 1024)
    assert not ring_fits(1, 1 << 50)


@pytest.mark.parametrize("output", ["torch", "numpy", "python", "arrow"])
def test_items_collated_from_a_ring_message_outlive_the_reuse_of_its_room(output: str) -> None:
    ring = Ring(1, 64 * 1024)
    batch = numbers_table(0, 50).to_batches()[0]
    place = ring.write(0, batch)
    assert isinstance(place, RingPlace)
    item = unpack_item(place, batch.schema, output, ring)  # type: ignore[arg-type]
    assert int(ring.positions[0, 1]) == place.end  # the room is free again
    other = numbers_table(1_000, 1_050).to_batches()[0]
    for _ in range(40):  # the ring wraps around several times over the first message
        again = ring.write(0, other)
        assert again is not None
        ring.release(again)
    values = item.to_pydict() if output == "arrow" else item
    assert [int(i) for i in values["id"]] == list(range(50))
    assert [float(v) for v in values["value"]] == [i * 0.5 for i in range(50)]
    assert [[float(x) for x in v] for v in values["vector"]] == [[i, i + 1, i + 2] for i in range(50)]


def test_messages_start_aligned_in_rings_of_any_size() -> None:
    ring = Ring(3, 100_003)
    batch = numbers_table(0, 7).to_batches()[0]
    for worker in range(3):
        for _ in range(30):  # wraps around
            place = ring.write(worker, batch)
            assert place is not None
            assert (ring.data[worker, place.offset :].data_ptr()) % 64 == 0
            ring.release(place)
    assert ring_capacity(123_457) % 4096 == 0
