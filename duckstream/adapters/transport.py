"""Arrow batches between DataLoader workers and the main process, as IPC messages.

DataLoader pickles items through a pipe, except tensors, which it moves into shared memory (a
new segment and a file descriptor per tensor). Both cost a lot per item on few cores: a pipe
moves 60 KiB in several blocking reads, a segment is created, mapped and unmapped per batch.

So each worker owns a ring in one shared-memory tensor made before the workers start: it
writes each message there and sends only where it lies (:class:`RingSlot`); the main process
copies the message out and marks the ring read up to its end. A worker never waits for room:
when its ring is full (the training loop holds back many batches, or a message is larger than
a quarter of the ring), the message travels the old way, as bytes when small and as a shared
tensor when large. The loader makes no rings where /dev/shm has little room.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch

__all__ = ["Ring", "RingSlot", "pack", "ring_capacity", "ring_fits", "unpack"]

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
    return max(MIN_RING_BYTES, min(MAX_RING_BYTES, 8 * transfer_bytes))


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


class RingSlot(NamedTuple):
    """Where a worker wrote one message in its ring."""

    worker: int
    offset: int  # in the worker's ring
    size: int
    end: int  # the ring position after this message; reading it frees everything before


class Ring:
    """One ring buffer per worker in shared memory, with its write and release positions.

    Positions only grow (bytes written since the ring was reset); a position modulo the
    capacity is an offset. Each side writes one position: the worker where it wrote up to,
    the main process up to where it read, so no lock is needed.
    """

    def __init__(self, workers: int, capacity: int = MAX_RING_BYTES) -> None:
        self.capacity = capacity
        self.data = torch.empty(workers, self.capacity, dtype=torch.uint8)
        self.data.share_memory_()  # type: ignore[no-untyped-call]
        self.positions = torch.zeros(workers, 2, dtype=torch.int64)
        self.positions.share_memory_()  # type: ignore[no-untyped-call]
        self._views: tuple[np.ndarray, np.ndarray] | None = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # Indexing a tensor costs microseconds a call; numpy views of the same memory do not.
        if self._views is None:
            self._views = (self.data.numpy(), self.positions.numpy())
        return self._views

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_views": None}  # views belong to one process

    @property
    def workers(self) -> int:
        return int(self.data.shape[0])

    def reset(self) -> None:
        """Forget every message: call only while no worker runs."""
        self._arrays()[1][:] = 0

    def write(self, worker: int, message: pa.Buffer) -> RingSlot | None:
        """Put ``message`` in ``worker``'s ring, or ``None`` when it does not fit now."""
        size = message.size
        if size > self.capacity // 4:
            return None
        data, positions = self._arrays()
        written = int(positions[worker, _WRITTEN])
        offset = written % self.capacity
        start = written if offset + size <= self.capacity else written + self.capacity - offset
        end = start + size
        if end - int(positions[worker, _RELEASED]) > self.capacity:
            return None
        offset = start % self.capacity
        data[worker, offset : offset + size] = np.frombuffer(message, dtype=np.uint8)
        positions[worker, _WRITTEN] = end
        return RingSlot(worker, offset, size, end)

    def read(self, slot: RingSlot) -> bytes:
        """A copy of the message at ``slot`` (the caller may keep it); frees its room."""
        data, positions = self._arrays()
        message = data[slot.worker, slot.offset : slot.offset + slot.size].tobytes()
        # Messages of one worker are read in the order written: reading this one frees the
        # room of any before it that were dropped unread (an epoch left early).
        positions[slot.worker, _RELEASED] = slot.end
        return message


def pack(batch: pa.RecordBatch, ring: Ring | None = None, worker: int = 0) -> RingSlot | bytes | torch.Tensor:
    """``batch`` as an IPC message (schema not included): in ``ring``, or bytes, or a shared tensor."""
    message = batch.serialize()
    if ring is not None:
        slot = ring.write(worker, message)
        if slot is not None:
            return slot
    if message.size < SHARED_MEMORY_BYTES:
        small: bytes = message.to_pybytes()
        return small
    packed = torch.empty(message.size, dtype=torch.uint8)
    packed.share_memory_()  # type: ignore[no-untyped-call]
    packed.numpy()[:] = memoryview(message)
    return packed


def unpack(
    packed: RingSlot | bytes | torch.Tensor, schema: pa.Schema, ring: Ring | None = None
) -> pa.RecordBatch:
    """The batch :func:`pack` made, read in place (a ring message is copied out first)."""
    if isinstance(packed, RingSlot):
        if ring is None:
            raise ValueError("a ring message needs the ring it was written to")
        packed = ring.read(packed)
    # The buffer keeps the bytes or the tensor's memory alive as long as the batch.
    data = pa.py_buffer(packed if isinstance(packed, bytes) else packed.numpy())
    batch: pa.RecordBatch = pa.ipc.read_record_batch(data, schema)
    return batch
