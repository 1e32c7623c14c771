"""Arrow batches between DataLoader workers and the main process, as IPC messages.

DataLoader pickles items through a pipe, except tensors, which it moves into shared memory (a
new segment and a file descriptor per tensor). Both cost a lot per item on few cores: a pipe
moves 60 KiB in several blocking reads, a segment is created, mapped and unmapped per batch.

So each worker owns a ring in one shared-memory tensor made before the workers start: it
writes each message there and sends only where it lies (:class:`RingPlace`); the main process
copies the message out (Arrow output, which the loop may keep), or collates it where it lies
and copies only the arrays that still point into the ring, then marks the ring read up to the
message's end. A worker never waits for room:
when its ring is full (the training loop holds back many batches, or a message is larger than
a quarter of the ring), the message travels the old way, as bytes when small and as a shared
tensor when large. The loader makes no rings where /dev/shm has little room.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from duckstream.adapters.collate import Output, collate_batch

__all__ = ["Ring", "RingPlace", "aligned", "pack", "ring_capacity", "ring_fits", "unpack", "unpack_item"]

# Above this size a shared-memory segment costs less than copying through the pipe (measured
# here: 60 KiB caption batches were 2x faster as bytes, 2.5 MiB image batches faster shared).
SHARED_MEMORY_BYTES = 1024 * 1024
# Per worker: room for eight transfers of the estimated size (DataLoader keeps two in flight
# per worker, the loop holds one; estimates from Parquet metadata run low), 1 to 16 MiB.
MIN_RING_BYTES = 1024 * 1024
MAX_RING_BYTES = 16 * 1024 * 1024
SHARED_MEMORY_DIR = "/dev/shm"


def ring_capacity(transfer_bytes: int) -> int:
    """Bytes of one worker's ring for transfers of about ``transfer_bytes``."""
    capacity = max(MIN_RING_BYTES, min(MAX_RING_BYTES, 8 * transfer_bytes))
    return -(-capacity // 4096) * 4096


def ring_fits(workers: int, capacity: int) -> bool:
    """Whether the rings leave most of the shared-memory file system free.

    Containers often mount a small /dev/shm (Docker: 64 MiB), and a process that touches
    shared memory beyond it dies of SIGBUS: without room, workers send batches the plain way.
    """
    try:
        stats = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return True  # no such mount (macOS): shared memory lives elsewhere
    return workers * capacity <= stats.f_bavail * stats.f_frsize // 2


_WRITTEN, _RELEASED = 0, 1
_SLACK = 64  # bytes reserved beyond the computed message size (alignment padding)
_ALIGNMENT = 64


def aligned(size: int) -> int:
    """``size`` rounded up to whole 64 bytes: what starts there is aligned as Arrow's buffers are."""
    return -(-size // _ALIGNMENT) * _ALIGNMENT


class RingPlace(NamedTuple):
    """Where a worker wrote one message in its ring."""

    worker: int
    offset: int  # in the worker's ring
    size: int
    end: int  # the ring position after this message; reading it frees everything before


class Ring:
    """One ring buffer per worker in shared memory, with its write and release positions.

    Positions only grow (bytes written since the ring was made); a position modulo the
    capacity is an offset. Each side writes one position: the worker where it wrote up to,
    the main process up to where it read, so no lock is needed.
    """

    def __init__(self, workers: int, capacity: int = MAX_RING_BYTES) -> None:
        self.capacity = aligned(capacity)  # each worker's ring starts aligned
        self.data = torch.empty(workers, self.capacity, dtype=torch.uint8)
        self.data.share_memory_()  # type: ignore[no-untyped-call]
        self.positions = torch.zeros(workers, 2, dtype=torch.int64)
        self.positions.share_memory_()  # type: ignore[no-untyped-call]
        self._views: tuple[np.ndarray, np.ndarray] | None = None
        self._schema_bytes: dict[pa.Schema, int] = {}
        self.key = uuid.uuid4().hex  # names this ring to the threads of the process reading it

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # Indexing a tensor costs microseconds a call; numpy views of the same memory do not.
        if self._views is None:
            self._views = (self.data.numpy(), self.positions.numpy())
        return self._views

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_views": None, "_schema_bytes": {}}  # views belong to one process

    def bytes_of(self, worker: int) -> np.ndarray:
        """``worker``'s ring as NumPy bytes (the shared memory itself)."""
        data: np.ndarray = self._arrays()[0][worker]
        return data

    @property
    def workers(self) -> int:
        return int(self.data.shape[0])

    def room_for(self, batch: pa.RecordBatch) -> int:
        """Bytes ``batch`` takes in a ring: its schema and batch messages, and some slack."""
        schema_bytes = self._schema_bytes.get(batch.schema)
        if schema_bytes is None:
            schema_bytes = self._schema_bytes[batch.schema] = batch.schema.serialize().size
        size = int(pa.ipc.get_record_batch_size(batch)) + schema_bytes + _SLACK
        # Whole multiples of 64 bytes, so that every message starts aligned, as Arrow's own
        # buffers do: arrays read in place are then aligned for numpy and torch.
        return aligned(size)

    def reserve(self, worker: int, size: int) -> RingPlace | None:
        """Room for ``size`` bytes in ``worker``'s ring, or ``None`` when there is none now.

        The room is the worker's once it writes there and calls :meth:`commit`.
        """
        size = aligned(size)
        if size > self.capacity // 4:
            return None
        _, positions = self._arrays()
        written = int(positions[worker, _WRITTEN])
        offset = written % self.capacity
        start = written if offset + size <= self.capacity else written + self.capacity - offset
        end = start + size
        if end - int(positions[worker, _RELEASED]) > self.capacity:
            return None
        return RingPlace(worker, start % self.capacity, size, end)

    def commit(self, place: RingPlace) -> None:
        """Mark the room of ``place`` written: the main process may read it from now on."""
        self._arrays()[1][place.worker, _WRITTEN] = place.end

    def write(self, worker: int, batch: pa.RecordBatch) -> RingPlace | None:
        """Write ``batch`` as an IPC stream into ``worker``'s ring, or ``None`` when it does not fit now."""
        place = self.reserve(worker, self.room_for(batch))
        if place is None:
            return None
        data, _ = self._arrays()
        # Serialised in place: no message buffer to allocate and copy.
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(data[worker, place.offset : place.offset + place.size]))
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        self.commit(place)
        return place._replace(size=sink.tell())

    def read(self, place: RingPlace) -> pa.RecordBatch:
        """The batch at ``place``, copied out (the caller may keep it); frees its room."""
        data, _ = self._arrays()
        copy = pa.allocate_buffer(place.size)  # from Arrow's pool, whose memory is reused warm
        np.frombuffer(copy, dtype=np.uint8)[:] = data[place.worker, place.offset : place.offset + place.size]
        self.release(place)
        return pa.ipc.open_stream(copy).read_next_batch()

    def borrow(self, place: RingPlace) -> pa.RecordBatch:
        """The batch at ``place``, in the ring itself: valid only until :meth:`release`."""
        data, _ = self._arrays()
        message = pa.py_buffer(data[place.worker, place.offset : place.offset + place.size])
        return pa.ipc.open_stream(message).read_next_batch()

    def release(self, place: RingPlace) -> None:
        """Give the room of ``place`` back to its worker."""
        # Messages of one worker are read in the order written: releasing this one frees the
        # room of any before it that were dropped unread (an epoch left early).
        self._arrays()[1][place.worker, _RELEASED] = place.end

    def holds(self, address: int) -> bool:
        """Whether memory at ``address`` lies in the rings (a value borrowed from them)."""
        start = int(self.data.data_ptr())
        return start <= address < start + self.data.numel()


def pack(
    batch: pa.RecordBatch, ring: Ring | None = None, worker: int = 0
) -> RingPlace | bytes | torch.Tensor:
    """``batch`` as an IPC message (schema not included): in ``ring``, or bytes, or a shared tensor."""
    if ring is not None:
        place = ring.write(worker, batch)
        if place is not None:
            return place
    message = batch.serialize()
    if message.size < SHARED_MEMORY_BYTES:
        small: bytes = message.to_pybytes()
        return small
    packed = torch.empty(message.size, dtype=torch.uint8)
    packed.share_memory_()  # type: ignore[no-untyped-call]
    packed.numpy()[:] = memoryview(message)
    return packed


def unpack(
    packed: RingPlace | bytes | torch.Tensor, schema: pa.Schema, ring: Ring | None = None
) -> pa.RecordBatch:
    """The batch :func:`pack` made, read in place (a ring message is copied out first)."""
    if isinstance(packed, RingPlace):
        if ring is None:
            raise ValueError("a ring message needs the ring it was written to")
        return ring.read(packed)
    # The buffer keeps the bytes or the tensor's memory alive as long as the batch.
    data = pa.py_buffer(packed if isinstance(packed, bytes) else packed.numpy())
    batch: pa.RecordBatch = pa.ipc.read_record_batch(data, schema)
    return batch


def unpack_item(
    packed: RingPlace | bytes | torch.Tensor, schema: pa.Schema, output: Output, ring: Ring | None = None
) -> Any:
    """The item :func:`~duckstream.adapters.collate.collate_batch` makes of the batch :func:`pack` made.

    Other outputs than Arrow copy strings, bytes and lists into Python objects anyway: a ring
    message is then collated where it lies, and only the arrays still pointing into the ring
    are copied, not the whole message.
    """
    if output == "arrow" or ring is None or not isinstance(packed, RingPlace):
        return collate_batch(unpack(packed, schema, ring), output)
    try:
        item = collate_batch(ring.borrow(packed), output)
        if isinstance(item, dict):
            item = {name: _owned(value, ring) for name, value in item.items()}
        return item
    finally:
        ring.release(packed)


def _owned(value: Any, ring: Ring) -> Any:
    if isinstance(value, torch.Tensor) and ring.holds(value.data_ptr()):
        return value.clone()
    if isinstance(value, np.ndarray) and ring.holds(value.ctypes.data):
        return value.copy()
    return value
