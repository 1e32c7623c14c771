"""A transform's items between DataLoader workers and the main process, their arrays in the ring.

A transform (decoding, tokenising) runs in the workers and returns, say, a dict of tensors.
DataLoader would hand each tensor over as a new shared-memory segment with its own file
descriptor, and pickle NumPy arrays through the pipe: a fixed cost per batch that the training
loop pays in ``next()``. Instead the worker copies the arrays of a dict or tuple item into its
ring (:class:`~duckstream.adapters.transport.Ring`) and sends a :class:`RingArrays` saying where
they lie. DataLoader's pin-memory thread calls its ``pin_memory()``, which copies the tensors
out into pinned memory there, off the loop's thread; without pinning the loader copies them out.
An item with no arrays, or whose arrays do not fit in the ring now, travels the usual way.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np
import torch

from duckstream.adapters.transport import Ring, RingPlace, aligned

__all__ = ["RingArrays", "pack_arrays", "register"]

# The main process's rings by key: the pin-memory thread finds an item's ring here.
_RINGS: weakref.WeakValueDictionary[str, Ring] = weakref.WeakValueDictionary()


def register(ring: Ring) -> None:
    """Let items written to ``ring`` find it in this process (the one that reads them)."""
    _RINGS[ring.key] = ring


class _Array(NamedTuple):
    """One array of an item, at ``start`` bytes into the item's room."""

    key: Any  # the dict key or tuple index
    tensor: bool  # a torch tensor, else a NumPy array
    dtype: Any
    shape: tuple[int, ...]
    start: int
    nbytes: int


class RingArrays:
    """A dict or tuple item whose arrays a worker wrote into its ring; the rest travels pickled.

    Neither a mapping nor a sequence, so that DataLoader hands it over whole and its pin-memory
    thread calls :meth:`pin_memory`.
    """

    __slots__ = ("arrays", "as_tuple", "fields", "place", "ring_key")

    def __init__(
        self, place: RingPlace, ring_key: str, fields: dict[Any, Any], arrays: list[_Array], as_tuple: bool
    ) -> None:
        self.place = place
        self.ring_key = ring_key
        self.fields = fields
        self.arrays = arrays
        self.as_tuple = as_tuple

    def take(self, ring: Ring | None = None, *, pin: bool = False) -> Any:
        """The item, its arrays copied out of the ring (tensors into pinned memory when ``pin``)."""
        if ring is None:
            ring = _RINGS.get(self.ring_key)
            if ring is None:
                raise RuntimeError("the ring this item was written to is gone (its pass was left)")
        row = ring.bytes_of(self.place.worker)
        fields = dict(self.fields)
        try:
            for array in self.arrays:
                start = self.place.offset + array.start
                source = row[start : start + array.nbytes]
                if array.tensor:
                    out = torch.empty(array.shape, dtype=array.dtype, pin_memory=pin)
                    out.reshape(-1).view(torch.uint8).numpy()[:] = source
                    fields[array.key] = out
                else:
                    fields[array.key] = source.view(array.dtype).reshape(array.shape).copy()
        finally:
            ring.release(self.place)
        return tuple(fields[i] for i in range(len(fields))) if self.as_tuple else fields

    def pin_memory(self) -> Any:
        """Called by DataLoader's pin-memory thread: the item, its tensors in pinned memory."""
        return self.take(pin=True)


def _ring_array(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.layout == torch.strided and value.device.type == "cpu" and not value.requires_grad
    return isinstance(value, np.ndarray) and not value.dtype.hasobject


def pack_arrays(item: Any, ring: Ring, worker: int) -> Any:
    """``item`` with its arrays in ``worker``'s ring (a :class:`RingArrays`), or ``item`` itself."""
    if type(item) is dict:
        fields, as_tuple = item, False
    elif type(item) is tuple:
        fields, as_tuple = dict(enumerate(item)), True
    else:
        return item
    arrays: list[_Array] = []
    size = 0
    for key, value in fields.items():
        if _ring_array(value):
            tensor = isinstance(value, torch.Tensor)
            nbytes = value.numel() * value.element_size() if tensor else value.nbytes
            arrays.append(_Array(key, tensor, value.dtype, tuple(value.shape), size, nbytes))
            size += aligned(nbytes)
    if not arrays:
        return item
    place = ring.reserve(worker, max(size, aligned(1)))
    if place is None:
        return item
    row = ring.bytes_of(worker)
    for array in arrays:
        value = fields[array.key]
        flat = (
            value.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy()
            if array.tensor
            else np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        )
        start = place.offset + array.start
        row[start : start + array.nbytes] = flat
    ring.commit(place)
    moved = {array.key for array in arrays}
    rest = {key: None if key in moved else value for key, value in fields.items()}
    return RingArrays(place, ring.key, rest, arrays, as_tuple)
