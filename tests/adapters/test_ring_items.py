"""A transform's items with their arrays in a worker's ring: what is taken out is what went in."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data._utils.pin_memory import pin_memory

from duckstream.adapters.ring_items import RingArrays, pack_arrays, register
from duckstream.adapters.transport import Ring

DTYPES = [torch.uint8, torch.int64, torch.float16, torch.float32, torch.bool, torch.complex64]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and a.equal(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


def tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 100, shape, generator=generator)
    return values.to(dtype)


@settings(max_examples=60, deadline=None)
@given(
    specs=st.lists(
        st.tuples(
            st.sampled_from(DTYPES),
            st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),
            st.booleans(),  # a NumPy array rather than a tensor
            st.booleans(),  # not contiguous (a transposed view)
        ),
        min_size=0,
        max_size=4,
    ),
    as_tuple=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_arrays_taken_out_of_the_ring_are_the_arrays_put_in(
    specs: list[tuple[torch.dtype, tuple[int, ...], bool, bool]], as_tuple: bool, seed: int
) -> None:
    values: list[Any] = ["a caption", 7]
    for index, (dtype, shape, as_numpy, transposed) in enumerate(specs):
        value = tensor(dtype, shape, seed + index)
        if transposed and value.dim() >= 2:
            value = value.transpose(0, 1)
        values.append(value.numpy() if as_numpy else value)
    item: Any = tuple(values) if as_tuple else {f"field{i}": v for i, v in enumerate(values)}
    ring = Ring(2, 1 << 20)
    packed = pack_arrays(item, ring, worker=1)
    if not specs:
        assert packed is item  # nothing to move
        return
    assert isinstance(packed, RingArrays)
    taken = packed.take(ring)
    assert type(taken) is type(item)
    pairs = zip(item, taken, strict=True) if as_tuple else ((item[k], taken[k]) for k in item)
    assert all(same(a, b) for a, b in pairs)
    if not as_tuple:
        assert list(taken) == list(item)
    # Taken out is a copy: the ring's room is free again and may be written over.
    assert int(ring.positions[1, 1]) == int(ring.positions[1, 0])


def test_a_conjugated_view_is_taken_out_as_its_values() -> None:
    value = torch.tensor([1 + 2j, 3 - 1j], dtype=torch.complex64).conj()  # a lazy conjugate
    ring = Ring(1, 1 << 20)
    packed = pack_arrays({"z": value}, ring, 0)
    assert isinstance(packed, RingArrays)
    assert packed.take(ring)["z"].tolist() == [1 - 2j, 3 + 1j]


def test_an_item_too_large_for_the_ring_or_without_arrays_travels_as_it_is() -> None:
    ring = Ring(1, 64 * 1024)
    large = {"image": torch.zeros(64 * 1024, dtype=torch.uint8)}  # over a quarter of the ring
    assert pack_arrays(large, ring, 0) is large
    plain = {"ids": [1, 2], "text": ["a", "b"]}
    assert pack_arrays(plain, ring, 0) is plain
    listed = [torch.zeros(3)]  # only dicts and tuples are looked into
    assert pack_arrays(listed, ring, 0) is listed
    objects = {"values": np.array([object(), 1], dtype=object)}
    assert pack_arrays(objects, ring, 0) is objects


def test_a_full_ring_sends_items_the_usual_way_until_read() -> None:
    ring = Ring(1, 64 * 1024)
    item = {"x": torch.arange(2048, dtype=torch.int32)}  # 8 KiB: eight fit
    packed = [pack_arrays(item, ring, 0) for _ in range(9)]
    assert all(isinstance(p, RingArrays) for p in packed[:8])
    assert packed[8] is item
    assert all(p.take(ring)["x"].equal(item["x"]) for p in packed[:8] if isinstance(p, RingArrays))
    assert isinstance(pack_arrays(item, ring, 0), RingArrays)


def test_the_pin_memory_thread_finds_the_ring_by_its_key() -> None:
    # DataLoader's pin-memory thread calls pin_memory() on what it does not know; there the item
    # finds its ring by key (pinning itself needs an accelerator, so it is asked for only there).
    ring = Ring(1, 1 << 20)
    register(ring)
    packed = pack_arrays({"x": torch.arange(5)}, ring, 0)
    assert isinstance(packed, RingArrays)
    if torch.accelerator.is_available():
        pinned = pin_memory([packed])  # type: ignore[no-untyped-call]
        assert pinned[0]["x"].is_pinned()
        assert pinned[0]["x"].tolist() == [0, 1, 2, 3, 4]
    else:
        assert packed.take()["x"].tolist() == [0, 1, 2, 3, 4]


def test_an_item_whose_ring_is_gone_says_so() -> None:
    packed = pack_arrays({"x": torch.arange(5)}, Ring(1, 1 << 20), 0)
    assert isinstance(packed, RingArrays)
    with pytest.raises(RuntimeError, match="ring this item was written to is gone"):
        packed.take()
