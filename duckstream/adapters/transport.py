"""Arrow batches between DataLoader workers and the main process through shared memory.

DataLoader moves tensors between processes in shared memory but pickles everything else
through a pipe. A batch serialised into a shared uint8 tensor crosses with one copy in the
worker and none in the main process, where Arrow reads it in place.
"""

from __future__ import annotations

import pyarrow as pa
import torch

__all__ = ["pack", "unpack"]


def pack(batch: pa.RecordBatch) -> torch.Tensor:
    """``batch`` as an IPC message in a shared-memory tensor (schema not included)."""
    message = batch.serialize()
    packed = torch.empty(message.size, dtype=torch.uint8)
    packed.share_memory_()  # type: ignore[no-untyped-call]
    packed.numpy()[:] = memoryview(message)
    return packed


def unpack(packed: torch.Tensor, schema: pa.Schema) -> pa.RecordBatch:
    """The batch :func:`pack` made, reading the tensor's memory in place."""
    # The numpy view keeps the tensor, and so the shared memory, alive as long as the batch.
    batch: pa.RecordBatch = pa.ipc.read_record_batch(pa.py_buffer(packed.numpy()), schema)
    return batch
