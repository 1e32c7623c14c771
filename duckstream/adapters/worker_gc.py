"""The objects a DataLoader worker inherits, kept out of its garbage collector's full passes.

A forked worker starts with every object of the training process (torch, pandas and the
user's own: hundreds of thousands). Each full collection in the worker walks them all and
writes to their headers, so the kernel copies the pages they lie in (copy-on-write) and the
read stalls: over 200,000 captions with 2 workers, one epoch in three took about twice as long.
Frozen (:func:`gc.freeze`, as Python's documentation advises for forked children), they are no
longer walked; the worker's own objects are collected as before, and a frozen object is still
freed when its last reference goes.
"""

from __future__ import annotations

import gc
import os

__all__ = ["freeze_inherited"]

_frozen_in: int | None = None


def freeze_inherited() -> None:
    """Freeze the objects alive now, once per process (a worker calls it as it starts reading)."""
    global _frozen_in
    if _frozen_in != os.getpid():
        gc.freeze()
        _frozen_in = os.getpid()
