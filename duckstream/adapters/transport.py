"""Arrow batches between DataLoader workers and the main process, as IPC messages.

DataLoader pickles items through a pipe, except tensors, which it moves into shared memory (a
new segment and a file descriptor per tensor). Small messages travel fastest as bytes through
the pipe; large ones in a shared uint8 tensor, which the main process reads in place.
"""

from __future__ import annotations

import pyarrow as pa
import torch

__all__ = ["SHARED_MEMORY_BYTES", "pack", "unpack"]

# Above this size a shared-memory segment costs less than copying through the pipe (measured
# here: 60 KiB caption batches were 2x faster as bytes, 2.5 MiB image batches faster shared).
SHARED_MEMORY_BYTES = 1024 * 1024


def pack(batch: pa.RecordBatch) -> bytes | torch.Tensor:
    """``batch`` as an IPC message (schema not included): bytes, or a shared tensor if large."""
    message = batch.serialize()
    if message.size < SHARED_MEMORY_BYTES:
        small: bytes = message.to_pybytes()
        return small
    packed = torch.empty(message.size, dtype=torch.uint8)
    packed.share_memory_()  # type: ignore[no-untyped-call]
    packed.numpy()[:] = memoryview(message)
    return packed


def unpack(packed: bytes | torch.Tensor, schema: pa.Schema) -> pa.RecordBatch:
    """The batch :func:`pack` made, read in place."""
    # The buffer keeps the bytes or the tensor's memory alive as long as the batch.
    data = pa.py_buffer(packed if isinstance(packed, bytes) else packed.numpy())
    batch: pa.RecordBatch = pa.ipc.read_record_batch(data, schema)
    return batch
